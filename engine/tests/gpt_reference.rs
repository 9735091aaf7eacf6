//! The GPT forward, backward and a 10-step AdamW trajectory against PyTorch.
//!
//! The reference (`tests/fixtures/gpt_tiny`, made by `tests/fixtures/make_reference.py`) is
//! computed in float64 from the same float32 parameters, so the differences below are the
//! engine's float32 rounding alone. Tolerances:
//! - logits: max |Δ| ≤ 1e-5 (measured 6e-8); loss: |Δ| ≤ 1e-5 (measured 0 in f32)
//! - every parameter gradient: max |Δ| ≤ 1e-3 · max |reference| of that tensor (+1e-7)
//! - AdamW: each of the 10 losses within 1e-4; final parameters max |Δ| ≤ 2e-4 and mean |Δ| ≤ 1e-6
//!   (measured: max 8.1e-5, mean 1.8e-7)

use std::path::PathBuf;

use convoy_engine::model::Model;
use convoy_engine::model::gpt::{Gpt, TENSORS};
use convoy_engine::model::llmc;
use convoy_engine::optim::Optimizer;
use convoy_engine::spec::OptimizerSpec;
use convoy_kernels::{IGNORE_INDEX, gradnorm};
use safetensors::SafeTensors;

fn fixture_dir() -> PathBuf {
    convoy_testkit::repo_root().join("tests/fixtures/gpt_tiny")
}

struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    fn load() -> Reference {
        let bytes =
            std::fs::read(fixture_dir().join("reference.safetensors")).expect("fixture present");
        Reference { bytes }
    }
    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("valid safetensors")
    }
    fn f32s(&self, name: &str) -> Vec<f32> {
        let st = self.st();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("tensor {name} in fixture"));
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }
    fn tokens(&self, name: &str) -> Vec<u32> {
        let st = self.st();
        let t = st.tensor(name).expect("token tensor");
        t.data()
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .map(|x| if x < 0 { IGNORE_INDEX } else { x as u32 })
            .collect()
    }
    fn meta(&self, key: &str) -> String {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).expect("metadata");
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_else(|| panic!("metadata {key}"))
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn load_model() -> Gpt {
    let (cfg, params) = llmc::read(&fixture_dir().join("model.bin")).expect("fixture model loads");
    Gpt::from_params(cfg, params)
}

#[test]
fn forward_and_backward_match_pytorch() {
    let r = Reference::load();
    let mut model = load_model();
    let cfg = *model.config();
    let (inputs, targets) = (r.tokens("inputs"), r.tokens("targets"));
    let (b, t) = (2, 16);

    // Logits of every position (forward without targets keeps them in the model).
    model.forward(&inputs, None, None, b, t);
    let ref_logits = r.f32s("logits");
    let (v, vp) = (cfg.vocab_size, cfg.padded_vocab_size);
    let mut worst = 0.0f32;
    for row in 0..b * t {
        let seq = &inputs[(row / t) * t..(row / t) * t + row % t + 1];
        let ours = model.next_token_logits(seq).to_vec();
        worst = worst.max(max_abs_diff(&ours, &ref_logits[row * v..(row + 1) * v]));
    }
    assert!(worst <= 1e-5, "logits differ by {worst}");
    let _ = vp;

    let (sum, n) = model.forward(&inputs, Some(&targets), Some(1.0), b, t);
    assert_eq!(n, targets.iter().filter(|&&x| x != IGNORE_INDEX).count());
    let loss = (sum / n as f64) as f32;
    let ref_loss = r.f32s("loss")[0];
    assert!((loss - ref_loss).abs() <= 1e-5, "loss {loss} vs {ref_loss}");

    model.grads_mut().fill(0.0);
    let mut buckets_seen = Vec::new();
    model
        .backward(&inputs, &mut |_, bucket| {
            buckets_seen.push(bucket.clone());
            Ok(())
        })
        .expect("backward");
    assert_eq!(
        buckets_seen,
        model.grad_buckets(),
        "buckets announced in order"
    );
    for tensor in TENSORS {
        let ours = model.grad(tensor);
        let theirs = r.f32s(&format!("grad.{}", tensor.name()));
        let scale = theirs.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let diff = max_abs_diff(ours, &theirs);
        assert!(
            diff <= 1e-3 * scale + 1e-7,
            "grad.{}: max diff {diff}, scale {scale}",
            tensor.name()
        );
    }
}

#[test]
fn adamw_trajectory_matches_pytorch() {
    let r = Reference::load();
    assert_eq!(r.meta("lr"), "0.01");
    assert_eq!(r.meta("grad_clip"), "1.0");
    let mut model = load_model();
    let spec = OptimizerSpec {
        lr: 0.01,
        weight_decay: 0.1,
        grad_clip: 1.0,
        beta1: Some(0.9),
        beta2: Some(0.95),
        eps: Some(1e-8),
        ..OptimizerSpec::default()
    };
    let mut opt = Optimizer::new(&spec, model.param_groups(), model.params().len());
    let (inputs, targets) = (r.tokens("inputs"), r.tokens("targets"));
    let ref_losses = r.f32s("adamw.losses");
    for (step, &ref_loss) in ref_losses.iter().enumerate() {
        model.grads_mut().fill(0.0);
        let (sum, n) = model.forward(&inputs, Some(&targets), Some(1.0), 2, 16);
        model
            .backward(&inputs, &mut |_, _| Ok(()))
            .expect("backward");
        let loss = (sum / n as f64) as f32;
        assert!(
            (loss - ref_loss).abs() <= 1e-4,
            "step {step}: loss {loss} vs {ref_loss}"
        );
        let norm = gradnorm::global_norm(model.grads());
        gradnorm::clip_grads(model.grads_mut(), norm, 1.0);
        let (params, grads) = model.params_and_grads();
        opt.step(params, grads, 0.01);
    }
    // A few parameters whose gradients are tiny amplify rounding through m/sqrt(v), so the
    // largest difference is bounded loosely and the mean tightly (a systematic error, such as
    // weight decay on the wrong tensors, moves the mean by more than 1e-6).
    let reference = r.f32s("adamw.final_params");
    let max = max_abs_diff(model.params(), &reference);
    let mean = model
        .params()
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs() as f64)
        .sum::<f64>()
        / reference.len() as f64;
    assert!(
        max <= 2e-4 && mean <= 1e-6,
        "parameters after 10 steps differ by {max} (max), {mean} (mean)"
    );
}
