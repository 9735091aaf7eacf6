//! Job-spec parsing and validation: the examples load, and each kind of mistake gets a one-line
//! error that names the field, the value and what is allowed.

use convoy_spec::{AttentionKernels, GemmKernels, JobSpec};

const BASE: &str = convoy_testkit::specs::GPT_TEXT;

fn err(text: &str) -> String {
    let e = JobSpec::parse(text, "job.toml")
        .expect_err("spec should be rejected")
        .to_string();
    assert!(!e.contains('\n'), "error is one line: {e}");
    assert!(e.contains("job.toml"), "error names the file: {e}");
    e
}

#[test]
fn examples_are_valid() {
    let root = convoy_testkit::repo_root();
    for name in [
        "examples/digits-mlp.toml",
        "examples/shakespeare-char.toml",
        "examples/shakespeare-gpt2.toml",
        "bench/gpt-cpu.toml",
    ] {
        let spec = JobSpec::load(&root.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!spec.name.is_empty());
    }
}

#[test]
fn base_is_valid_and_paths_resolve_against_the_spec_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("job.toml");
    std::fs::write(&path, BASE).expect("write");
    let spec = JobSpec::load(&path).expect("valid");
    let convoy_spec::DataSpec::Text(t) = &spec.data else {
        panic!("text data")
    };
    assert_eq!(
        t.files[0],
        std::fs::canonicalize(dir.path())
            .expect("canon")
            .join("x.txt")
    );
}

#[test]
fn unknown_keys_are_rejected_with_their_name_and_line() {
    let e = err(&BASE.replace("steps = 10", "setps = 10"));
    assert!(e.contains("setps") && e.contains("line 2"), "{e}");
    let e = err(&format!("{BASE}dropout = 0.1\n"));
    assert!(e.contains("dropout"), "{e}");
    let e = err(&BASE.replace("n_layer = 2", "n_layers = 2"));
    assert!(e.contains("n_layers"), "{e}");
}

#[test]
fn kernel_choices_are_read_from_the_spec() {
    let text = format!(
        "backend = \"cuda\"\nprecision = \"bf16\"\n{}[kernels]\ngemm = \"cublaslt\"\nattention = \"flash\"\n",
        BASE.replace("n_embd = 16", "n_embd = 32")
    );
    let spec = JobSpec::parse(&text, "job.toml").expect("valid");
    assert_eq!(spec.kernels.gemm, GemmKernels::Cublaslt);
    assert_eq!(spec.kernels.attention, AttentionKernels::Flash);
    assert!(
        JobSpec::parse(BASE, "job.toml")
            .expect("valid")
            .kernels
            .is_default()
    );
}

#[test]
fn invalid_values_name_field_value_and_allowed_range() {
    let cases = [
        (BASE.replace("steps = 10", "steps = 0"), "steps = 0"),
        (
            BASE.replace("name = \"t\"", "name = \"x\\u001b]0;owned\\u0007\""),
            "name = \"x\\u{1b}]0;owned\\u{7}\": control characters are not allowed",
        ),
        (
            BASE.replace("n_embd = 16", "n_embd = 15"),
            "model.n_embd = 15",
        ),
        (
            BASE.replace("seq_len = 8", "seq_len = 9"),
            "seq_len = 9: must be between 1 and model.context = 8",
        ),
        (
            BASE.replace("batch_size = 4", "batch_size = 0"),
            "batch_size = 0",
        ),
        (
            format!("{BASE}[optimizer]\nlr = -1.0\n"),
            "optimizer.lr = -1",
        ),
        (
            format!("{BASE}[optimizer]\nkind = \"sgd\"\nbeta1 = 0.9\n"),
            "optimizer.beta1 does not apply",
        ),
        (
            format!("{BASE}[optimizer]\nmomentum = 0.9\n"),
            "optimizer.momentum does not apply",
        ),
        (
            format!("{BASE}[schedule]\nwarmup_steps = 11\n"),
            "schedule.warmup_steps = 11",
        ),
        (
            BASE.replace("tokenizer = \"byte\"", "tokenizer = \"bpe\""),
            "bpe",
        ),
        (
            BASE.replace("kind = \"text\"", "kind = \"csv\"\npath = \"d.csv\"")
                .replace("files = [\"x.txt\"]\ntokenizer = \"byte\"\n", ""),
            "needs model.kind = \"mlp\"",
        ),
        (
            format!("{BASE}[sample]\ntemperature = 0.0\n"),
            "sample.temperature = 0",
        ),
        (
            BASE.replace("steps = 10", "steps = 10\nbackend = \"tpu\""),
            "tpu",
        ),
        (BASE.replace("seq_len = 8\n", ""), "seq_len is missing"),
        (
            format!("{BASE}[kernels]\ngemm = \"cublaslt\"\n"),
            "[kernels] choose the CUDA backend's GPT kernels: it needs backend = \"cuda\"",
        ),
        (format!("{BASE}[kernels]\ngemm = \"cublas\"\n"), "cublas"),
        (
            format!("backend = \"cuda\"\n{BASE}[kernels]\nattention = \"flash\"\n"),
            "kernels.attention = \"flash\" needs precision = \"bf16\"",
        ),
        (
            format!(
                "backend = \"cuda\"\nprecision = \"bf16\"\n{BASE}[kernels]\nattention = \"flash\"\n"
            ),
            "needs heads of 16, 32 or 64 channels; model.n_embd / model.n_head = 8",
        ),
    ];
    for (text, expected) in cases {
        let e = err(&text);
        assert!(e.contains(expected), "expected {expected:?} in: {e}");
    }
}
