//! Self-describing checkpoints: exporting a training state (safetensors, llm.c) without the
//! spec, the state file's versioning, and which specs a state resumes or seeds.

mod common;

use std::path::Path;

use common::{tiny, train};
use convoy_engine::collective::SingleProcess;
use convoy_engine::export::{ExportFormat, export};
use convoy_engine::model::llmc;
use convoy_engine::spec::JobSpec;
use convoy_engine::state;
use convoy_engine::train::{TrainState, Trainer};
use convoy_testkit::specs::TinyGpt;
use convoy_testkit::{bits, repo_root};
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

/// The tiny GPT with shuffled data, 6 steps and learning rate `lr` (no decay, no schedule).
fn tiny_spec(dir: &Path, lr: &str) -> JobSpec {
    let training = format!("[optimizer]\nlr = {lr}\n");
    tiny(
        dir,
        TinyGpt {
            steps: 6,
            data: "shuffle = true",
            training: &training,
            ..TinyGpt::default()
        },
    )
}

fn trained_state(dir: &Path) -> (JobSpec, TrainState) {
    let spec = tiny_spec(dir, "3e-3");
    let state = train(&spec, 3).state().expect("state");
    (spec, state)
}

/// A damaged state file is an error, never a panic or an abort. In the current format the
/// envelope's checksum catches every change; the older, unchecksummed format 2 (still read, so
/// older checkpoints resume) reaches the payload decoder with the damage, so it is swept too:
/// each of the first bytes, where the length prefixes and the strings are, is set to values
/// that make huge or torn lengths. A length prefix of exabytes used to abort the process.
#[test]
fn a_damaged_state_is_an_error_never_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, st) = trained_state(dir.path());
    let bytes = state::encode(&st);
    let origin = Path::new("damaged.state");
    let mut v2 = b"CONVOYTS".to_vec();
    v2.extend_from_slice(&2u32.to_le_bytes());
    v2.extend_from_slice(&bytes[convoy_envelope::HEADER_LEN..]);
    assert_eq!(
        state::decode(&v2, origin).expect("format 2 reads").params,
        st.params
    );
    let mut v2_errors = 0;
    for pos in 0..bytes.len().min(512) {
        for v in [0x00, 0x7f, 0xfb, 0xfc, 0xfd, 0xfe, 0xff] {
            let mut b = bytes.clone();
            if b[pos] != v {
                b[pos] = v;
                assert!(
                    state::decode(&b, origin).is_err(),
                    "byte {pos} = {v:#x} unnoticed"
                );
            }
            let mut b = v2.clone();
            b[pos] = v;
            v2_errors += usize::from(state::decode(&b, origin).is_err());
        }
    }
    assert!(v2_errors > 0, "no damage was noticed at all");
    assert!(state::decode(&bytes[..bytes.len() / 2], origin).is_err());
    assert!(state::decode(&v2[..v2.len() / 2], origin).is_err());
}

#[test]
fn state_describes_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spec, st) = trained_state(dir.path());
    assert_eq!(st.step, 3);
    assert_eq!(st.spec_hash, spec.resume_hash());
    assert_eq!(st.metrics.as_ref().map(|m| m.step), Some(3));
    let cfg = st.gpt.expect("a GPT state carries its config");
    assert_eq!(cfg.num_params(), st.params.len());
    assert_eq!(
        st.tensors.first().map(|t| t.name.as_str()),
        Some("wte.weight")
    );
    assert_eq!(
        st.tensors.last().map(|t| t.name.as_str()),
        Some("ln_f.bias")
    );
    let covered: usize = st.tensors.iter().map(|t| t.len()).sum();
    assert_eq!(covered, st.params.len());
}

#[test]
fn safetensors_export_holds_every_tensor_as_sliced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, st) = trained_state(dir.path());
    let path = dir.path().join("model.safetensors");
    export(&st, ExportFormat::Safetensors, &path).expect("export");
    assert!(
        !path.with_extension("tmp").exists(),
        "temporary file renamed"
    );

    let bytes = std::fs::read(&path).expect("read back");
    let file = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    assert_eq!(file.len(), st.tensors.len());
    for t in &st.tensors {
        let view = file.tensor(&t.name).expect("tensor present");
        assert_eq!(view.dtype(), Dtype::F32, "{}", t.name);
        assert_eq!(view.shape(), t.shape.as_slice(), "{}", t.name);
        let expected: Vec<u8> = st.params[t.range()]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(view.data(), expected.as_slice(), "{}", t.name);
    }
    let (_, meta) = SafeTensors::read_metadata(&bytes).expect("header");
    let meta = meta.metadata().clone().expect("metadata");
    assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
    assert_eq!(meta.get("convoy_step").map(String::as_str), Some("3"));
    assert_eq!(meta.get("convoy_model"), Some(&st.model));
}

#[test]
fn llmc_export_reads_back_and_needs_a_gpt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, st) = trained_state(dir.path());
    let path = dir.path().join("model.bin");
    export(&st, ExportFormat::Llmc, &path).expect("export");
    let (cfg, params) = llmc::read(&path).expect("llm.c reads it");
    assert_eq!(Some(cfg), st.gpt);
    assert_eq!(bits(&params), bits(&st.params));

    // A classifier has no llm.c form; its safetensors export still works.
    let mut mlp = JobSpec::load(&repo_root().join("examples/digits-mlp.toml")).expect("example");
    mlp.steps = 2;
    let st = train(&mlp, 1).state().expect("state");
    assert!(st.gpt.is_none());
    let e = export(&st, ExportFormat::Llmc, &path)
        .expect_err("not a GPT")
        .to_string();
    assert!(
        e.contains("llm.c export needs a GPT model; this checkpoint is mlp("),
        "{e}"
    );
    let path = dir.path().join("mlp.safetensors");
    export(&st, ExportFormat::Safetensors, &path).expect("export");
    let bytes = std::fs::read(&path).expect("read back");
    let file = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let w = file.tensor("layers.0.weight").expect("first layer");
    assert_eq!(w.shape(), [128, 64]);
}

#[test]
fn state_round_trips_and_other_versions_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, st) = trained_state(dir.path());
    let origin = Path::new("state.bin");
    let bytes = state::encode(&st);
    assert_eq!(state::decode(&bytes, origin).expect("decode"), st);

    let mut old = b"CONVOYTS".to_vec();
    old.extend_from_slice(&1u32.to_le_bytes());
    old.extend_from_slice(&bytes[convoy_envelope::HEADER_LEN..]);
    let e = state::decode(&old, origin)
        .expect_err("version 1")
        .to_string();
    assert!(
        e.contains("state.bin") && e.contains("version 1") && e.contains("reads versions 2 and 3"),
        "{e}"
    );
    let newer = convoy_envelope::seal(
        convoy_envelope::Header {
            kind: state::KIND,
            version: 4,
            tag: 0,
        },
        &bytes[convoy_envelope::HEADER_LEN..],
    );
    let e = state::decode(&newer, origin)
        .expect_err("version 4")
        .to_string();
    assert!(e.contains("version 4") && e.contains("newer"), "{e}");
}

#[test]
fn restore_refuses_a_state_from_a_different_spec() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spec, st) = trained_state(dir.path());
    let other = tiny_spec(dir.path(), "1e-3");
    let mut t = Trainer::new(&other, Box::new(SingleProcess)).expect("trainer");
    let e = t.restore(st.clone()).expect_err("other lr").to_string();
    assert!(
        e.contains("the checkpoint was written by a different spec (model, data or optimizer settings changed)"),
        "{e}"
    );

    // More steps (and other checkpoint or eval settings) resume.
    let mut longer = spec.clone();
    longer.steps = 20;
    longer.checkpoint.interval = 5;
    let mut t = Trainer::new(&longer, Box::new(SingleProcess)).expect("trainer");
    t.restore(st.clone()).expect("restore");
    assert_eq!(t.step(), 3);
    assert_eq!(t.last_metrics(), st.metrics.as_ref());
}

#[test]
fn init_params_from_copies_only_the_parameters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, st) = trained_state(dir.path());
    // Fine-tuning under another spec (a different lr) is allowed.
    let tune = tiny_spec(dir.path(), "1e-4");
    let mut t = Trainer::new(&tune, Box::new(SingleProcess)).expect("trainer");
    t.init_params_from(&st).expect("init");
    assert_eq!(t.step(), 0);
    assert!(t.last_metrics().is_none());
    assert_eq!(bits(t.model().params()), bits(&st.params));
    let fresh = t.state().expect("state");
    assert_eq!(fresh.optimizer.step, 0);
    assert!(fresh.optimizer.m.iter().all(|&x| x == 0.0));
    assert_eq!(t.train_step().expect("step").step, 1);

    // Another architecture is refused, naming both.
    let mut wide = tune.clone();
    if let convoy_engine::spec::ModelSpec::Gpt(g) = &mut wide.model {
        g.n_embd = 32;
    }
    let mut t = Trainer::new(&wide, Box::new(SingleProcess)).expect("trainer");
    let e = t
        .init_params_from(&st)
        .expect_err("other model")
        .to_string();
    assert!(e.contains("n_embd=16") && e.contains("n_embd=32"), "{e}");
}
