//! Making libnccl loadable for CUDA ranks.
//!
//! cudarc opens NCCL by the names `libnccl.so` and `libnccl.so.<CUDA major>`, but NCCL installs
//! (the `nvidia-nccl-cu12` wheel among them) ship only `libnccl.so.2`. When no `libnccl.so` is
//! on the library path but a `libnccl.so.2` is, the daemon links `libnccl.so` to it in a folder
//! of its own and puts that folder first on the ranks' `LD_LIBRARY_PATH` (the dynamic loader
//! reads the variable at process start, so the daemon, not the rank, has to set it).

use std::path::{Path, PathBuf};

/// The `LD_LIBRARY_PATH` CUDA ranks should get, given the daemon's own (`search`) and a folder
/// the daemon owns (`link_dir`); `Ok(None)` when nothing needs changing (NCCL is loadable as it
/// is, or not installed at all).
pub fn library_path(search: &str, link_dir: &Path) -> std::io::Result<Option<String>> {
    let dirs: Vec<PathBuf> = std::env::split_paths(search).collect();
    if dirs.iter().any(|d| d.join("libnccl.so").exists()) {
        return Ok(None);
    }
    let Some(real) = dirs
        .iter()
        .map(|d| d.join("libnccl.so.2"))
        .find(|p| p.exists())
    else {
        return Ok(None);
    };
    std::fs::create_dir_all(link_dir)?;
    let link = link_dir.join("libnccl.so");
    // A link from an earlier daemon start may point at another install: replace it.
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link)?;
    }
    std::os::unix::fs::symlink(&real, &link)?;
    let joined = std::env::join_paths(std::iter::once(link_dir.to_path_buf()).chain(dirs))
        .map_err(std::io::Error::other)?;
    Ok(Some(joined.to_string_lossy().into_owned()))
}

#[cfg(test)]
mod tests {
    use super::library_path;

    #[test]
    fn a_versioned_nccl_gets_an_unversioned_link_first_on_the_path() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let wheel = tmp.path().join("nvidia/nccl/lib");
        std::fs::create_dir_all(&wheel).expect("mkdir");
        std::fs::write(wheel.join("libnccl.so.2"), b"not really a library").expect("write");
        let links = tmp.path().join("links");
        let search = format!("/nonexistent:{}", wheel.display());

        let path = library_path(&search, &links)
            .expect("io")
            .expect("a new path");
        assert_eq!(path, format!("{}:{search}", links.display()));
        let target = std::fs::read_link(links.join("libnccl.so")).expect("a link");
        assert_eq!(target, wheel.join("libnccl.so.2"));
        // Again (a daemon restart): the link is replaced, not an error.
        assert!(library_path(&search, &links).expect("io").is_some());
    }

    #[test]
    fn nothing_changes_when_nccl_is_loadable_or_absent() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let links = tmp.path().join("links");
        assert_eq!(library_path("/nonexistent", &links).expect("io"), None);
        std::fs::write(tmp.path().join("libnccl.so"), b"x").expect("write");
        let search = tmp.path().display().to_string();
        assert_eq!(library_path(&search, &links).expect("io"), None);
        assert!(!links.exists());
    }
}
