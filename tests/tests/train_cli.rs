//! `convoy train` and `convoy data prepare` as a user runs them.

use convoy_testkit::{convoy, repo_root};
use serde_json::Value;

fn json_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[test]
fn digits_mlp_reaches_95_percent_accuracy() {
    let out = convoy(&["train", "examples/digits-mlp.toml", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = json_lines(&out.stdout);
    let summary = events
        .iter()
        .find(|e| e["event"] == "summary")
        .expect("a summary line");
    let acc = summary["eval"]["classification"]["accuracy"]
        .as_f64()
        .expect("accuracy");
    assert!(acc >= 0.95, "validation accuracy {acc}");
    let steps = events.iter().filter(|e| e["event"] == "step").count();
    assert_eq!(steps, 600);
}

#[test]
fn prepared_shards_train_and_resume_bit_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let text = std::fs::read_to_string(repo_root().join("examples/data/tinyshakespeare.txt"))
        .expect("data");
    std::fs::write(d.join("a.txt"), &text[..40_000]).expect("write");
    let shards = d.join("shards");
    let out = convoy(&[
        "data",
        "prepare",
        "--tokenizer",
        "byte",
        "--val-fraction",
        "0.1",
        "-o",
        shards.to_str().expect("utf-8"),
        d.join("a.txt").to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("train tokens"));

    let spec = |steps: u64| {
        format!(
            "name = \"shards\"\nsteps = {steps}\nbatch_size = 4\nseq_len = 32\n\
             [model]\nkind = \"gpt\"\nn_layer = 2\nn_head = 2\nn_embd = 32\ncontext = 32\n\
             [data]\nkind = \"tokens\"\ntrain = \"shards/train_*.bin\"\nval = \"shards/val_*.bin\"\ntokenizer = \"byte\"\nshuffle = true\n\
             [optimizer]\nlr = 1e-3\n"
        )
    };
    std::fs::write(d.join("six.toml"), spec(6)).expect("spec");
    std::fs::write(d.join("three.toml"), spec(3)).expect("spec");
    let p = |name: &str| d.join(name).to_str().expect("utf-8").to_string();

    let straight = convoy(&["train", &p("six.toml"), "--export", &p("straight.bin")]);
    assert!(
        straight.status.success(),
        "{}",
        String::from_utf8_lossy(&straight.stderr)
    );
    let first = convoy(&["train", &p("three.toml"), "--save-state", &p("state.bin")]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let resumed = convoy(&[
        "train",
        &p("six.toml"),
        "--resume",
        &p("state.bin"),
        "--export",
        &p("resumed.bin"),
    ]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let (a, b) = (
        std::fs::read(p("straight.bin")).expect("a"),
        std::fs::read(p("resumed.bin")).expect("b"),
    );
    assert!(a == b, "resumed weights differ from the straight run's");
}

#[test]
fn malformed_spec_exits_non_zero_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    let good =
        std::fs::read_to_string(repo_root().join("examples/digits-mlp.toml")).expect("example");
    std::fs::write(&path, good.replace("batch_size = 32", "batch_size = -3")).expect("write");
    let out = convoy(&["train", path.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("bad.toml") && err.contains("batch_size"),
        "{err}"
    );
}
