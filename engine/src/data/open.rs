//! Opening the files a job names (data, a dataset description, an `init_from` checkpoint).
//! A spec is written by a user and read by a rank on someone's machine: a path that names a
//! device, a FIFO or a socket would make the rank read `/dev/zero` for ever or block until
//! someone writes. Only regular files are read; anything else is refused with one line.
//! The file is opened without blocking, so a FIFO is refused instead of waiting for a
//! writer; for a regular file the flag changes nothing.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{EngineError, Result};

/// Opens `path` for reading if it is a regular file (a symbolic link is followed).
pub fn open_regular(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| EngineError::io(path, e))?;
    let kind = file
        .metadata()
        .map_err(|e| EngineError::io(path, e))?
        .file_type();
    let what = if kind.is_file() {
        return Ok(file);
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    };
    Err(EngineError::data(
        path,
        format!("is {what}; a job reads regular files only"),
    ))
}

/// The whole of a regular file, as `std::fs::read` would read it.
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = vec![];
    open_regular(path)?
        .read_to_end(&mut bytes)
        .map_err(|e| EngineError::io(path, e))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(path: &Path) -> String {
        let e = open_regular(path).expect_err("refused").to_string();
        assert!(!e.contains('\n'), "one line: {e}");
        e
    }

    #[test]
    fn devices_fifos_and_directories_are_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(
            refused(Path::new("/dev/zero"))
                .ends_with("is a device; a job reads regular files only")
        );
        assert!(refused(dir.path()).contains("is a directory"));
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        // With no writer, a blocking open would wait for ever.
        assert!(refused(&fifo).contains("is a FIFO"));
        let file = dir.path().join("data.csv");
        std::fs::write(&file, "1,2\n").expect("write");
        assert_eq!(read_regular(&file).expect("a regular file"), b"1,2\n");
    }
}
