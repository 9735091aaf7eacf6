//! Files and sled databases on disk, for the tests that damage or reopen them.

use std::path::{Path, PathBuf};

/// Opens what `open` opens, waiting while a just-dropped handle still holds sled's lock (sled
/// releases it from a background thread shortly after the drop).
pub fn reopen<T, E: std::fmt::Display>(mut open: impl FnMut() -> Result<T, E>) -> T {
    for _ in 0..200 {
        match open() {
            Ok(t) => return t,
            Err(e) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("open: {e}"),
        }
    }
    panic!("sled's lock was never released")
}

/// Every file under `dir`, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).expect("a test directory") {
        let p = e.expect("a directory entry").path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Copies every file under `from` to the same place under `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    for f in files_under(from) {
        let dest = to.join(f.strip_prefix(from).expect("under from"));
        std::fs::create_dir_all(dest.parent().expect("a parent")).expect("create a directory");
        std::fs::copy(&f, &dest).expect("copy a file");
    }
}

/// Copies `pristine` to `copy` and flips one random bit of the copy of `file` (a file under
/// `pristine`): the damaged file and the byte; `None`, and nothing flipped, when the file is
/// empty.
pub fn copy_with_flipped_bit(
    pristine: &Path,
    copy: &Path,
    file: &Path,
    rng: &mut impl rand::Rng,
) -> Option<(PathBuf, usize)> {
    copy_dir(pristine, copy);
    let target = copy.join(
        file.strip_prefix(pristine)
            .expect("under the pristine copy"),
    );
    let mut bytes = std::fs::read(&target).expect("read the file to damage");
    if bytes.is_empty() {
        return None;
    }
    let at = rng.random_range(0..bytes.len());
    bytes[at] ^= 1 << rng.random_range(0..8);
    std::fs::write(&target, &bytes).expect("write the damaged file");
    Some((target, at))
}
