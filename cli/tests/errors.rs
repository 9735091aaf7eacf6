//! The `convoy` binary's contract with scripts: exit status 0 on success, non-zero with one
//! line naming the problem otherwise. (Having an integration test here also makes
//! `cargo test` build the binary that the `convoy-tests` crate drives.)

use std::process::Command;

fn convoy(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(args)
        .output()
        .expect("run convoy");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn missing_spec_file_is_one_line_naming_it() {
    let (ok, _, err) = convoy(&["train", "/nonexistent/job.toml"]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/job.toml"), "{err}");
}

#[test]
fn unknown_tokenizer_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (ok, _, err) = convoy(&[
        "data",
        "prepare",
        "--tokenizer",
        "bpe",
        "-o",
        out.to_str().expect("utf-8"),
        "x.txt",
    ]);
    assert!(!ok);
    assert!(
        err.contains("--tokenizer bpe") && err.contains("byte or gpt2"),
        "{err}"
    );
}
