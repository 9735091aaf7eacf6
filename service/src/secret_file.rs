//! Files that hold a secret (an API token, the join token, the cluster secret): read whole,
//! trimmed, and refused when others may read them, as ssh refuses a private key others can
//! read; a secret others could have copied is no secret. Written with mode 0600.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} may be read by other users (mode {mode:o}): a secret must be private to its owner \
         (chmod 600 {})",
        path.display(), path.display()
    )]
    Readable { path: PathBuf, mode: u32 },
    #[error("{} is empty", path.display())]
    Empty { path: PathBuf },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The secret in `path` (surrounding whitespace removed).
pub fn read(path: &Path) -> Result<String, SecretFileError> {
    let err = |source| SecretFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Readable {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(err)?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(SecretFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(secret.to_string())
}

/// Writes `secret` to a new file at `path` that only its owner may read (an existing file is
/// replaced).
pub fn write(path: &Path, secret: &str) -> Result<(), SecretFileError> {
    let err = |source| SecretFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(secret.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_others_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("token");
        write(&path, "s3cret").expect("written");
        assert_eq!(read(&path).expect("private"), "s3cret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let msg = read(&path).expect_err("readable by others").to_string();
        assert!(
            msg.contains("mode 644") && msg.contains("chmod 600"),
            "{msg}"
        );
        assert_eq!(msg.lines().count(), 1);
    }
}
