//! Helpers for convoy's integration tests, which drive the real binaries.

pub mod cluster;

use std::path::PathBuf;
use std::process::{Command, Output};

/// The `convoy` binary of this build (cargo builds it, with `convoy-coordinator` and
/// `convoy-worker`, for the `convoy-cli` tests).
pub fn convoy_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/convoy
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("convoy");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test --workspace` (or `cargo build --bins`) first",
        bin.display()
    );
    bin
}

/// Runs `convoy` with `args` from the repository root.
pub fn convoy(args: &[&str]) -> Output {
    Command::new(convoy_bin())
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run convoy")
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}
