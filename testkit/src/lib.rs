//! What convoy's tests share, so no test file carries its own copy: where the repository and
//! its example data are, the small specs the tests train, bit patterns for bit-exactness
//! checks, the built binaries, ([`cluster`]) a real cluster of daemon processes driven with
//! the `convoy` CLI, and ([`dev`]) `convoy dev`'s own cluster.

pub mod cluster;
pub mod dev;
pub mod specs;

pub use convoy_harness as harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

/// The repository's root: beside the sources these tests were built from, or, for a test
/// binary carried to another machine (the GPU kit runs them from a copy of the repository),
/// the nearest directory above the working directory that holds `examples/data`.
pub fn repo_root() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if built.join("examples/data").is_dir() {
        return built;
    }
    let cwd = std::env::current_dir().expect("a working directory");
    cwd.ancestors()
        .find(|d| d.join("examples/data").is_dir())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("no repository (examples/data) above {}", cwd.display()))
}

/// A file of the repository's examples, e.g. `examples("data/digits.csv.gz")`.
pub fn examples(rel: &str) -> PathBuf {
    repo_root().join("examples").join(rel)
}

/// The bit pattern of each value: bit-exactness is asserted on these, so that -0.0 and 0.0,
/// or two NaNs, are told apart.
pub fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// The directory of the binaries of this build (`target/<profile>`, where cargo puts the
/// daemons and the CLI when it builds the workspace's tests).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a target directory")
        .to_path_buf();
    let convoy = dir.join("convoy");
    assert!(
        convoy.exists(),
        "{} is missing: run `cargo test --workspace` (or `cargo build --bins`) first",
        convoy.display()
    );
    dir
}

/// Runs `convoy` with `args` from the repository root.
pub fn convoy(args: &[&str]) -> Output {
    Command::new(bin_dir().join("convoy"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run convoy")
}

/// The JSON a successful `convoy ARGS --json` printed; a failure panics with its stderr.
pub fn json_output(args: &[&str], out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "convoy {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// Serialises the tests of one test binary that run clusters: two cores shared by several
/// clusters would make every one of them slow.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Flips one byte of a chunk of the newest checkpoint of the newest job in the coordinator's
/// checkpoint store in `checkpoints` (files `chunks/<job>/<step>-<generation>/<part>-<index>`),
/// as a failing disk would.
pub fn corrupt_newest_chunk(checkpoints: &Path) {
    let newest = |dir: &Path| {
        std::fs::read_dir(dir)
            .expect("list the chunk files")
            .map(|e| e.expect("an entry").path())
            .max_by_key(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                let lead = name
                    .as_deref()
                    .and_then(|n| n.split('-').next())
                    .map(str::to_owned);
                lead.and_then(|n| n.parse::<u64>().ok()).unwrap_or(0)
            })
            .expect("a chunk directory")
    };
    let root = checkpoints.join("chunks");
    let upload = newest(&newest(&root));
    let chunk = newest(&upload);
    let mut bytes = std::fs::read(&chunk).expect("read the chunk");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&chunk, bytes).expect("write the chunk");
}
