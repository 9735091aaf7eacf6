//! The whole GPT on the CUDA backend against the CPU backend: one forward and backward, a
//! 10-step training trajectory, run-to-run determinism, bit-exact resume, and the
//! out-of-memory message. Every test prints that it skipped on a machine without a GPU.
//!
//! Tolerances: the GPU sums in other orders than the CPU (GEMM tiles, block reductions) and
//! may fuse multiply-adds, so single-pass results agree to ~1e-6 relative; gradients are
//! compared per tensor against 1e-4 × the tensor's largest magnitude (tiny gradients cancel).
//! Over ten AdamW steps at lr 3e-3 those differences are amplified (AdamW normalises small
//! gradients to unit steps), hence 1e-3 relative on the losses.

use std::path::Path;
use std::sync::Arc;

use convoy_engine::collective::SingleProcess;
use convoy_engine::model::Model;
use convoy_engine::model::gpt::cuda::GptCuda;
use convoy_engine::model::gpt::{Gpt, GptConfig, TENSORS};
use convoy_engine::spec::{AttentionKernels, GemmKernels, JobSpec, KernelSpec, Precision};
use convoy_engine::train::Trainer;
use convoy_kernels::cuda::Device;
use convoy_testkit::bits;

fn gpu_or_skip(test: &str) -> Option<Arc<Device>> {
    match Device::open(0) {
        Ok(Some(d)) => Some(Arc::new(d)),
        Ok(None) if std::env::var_os("CONVOY_REQUIRE_GPU").is_some() => {
            panic!("{test}: CONVOY_REQUIRE_GPU is set but no GPU (or stand-in driver) is visible")
        }
        Ok(None) => {
            eprintln!("{test}: skipped (no CUDA driver or no GPU on this machine)");
            None
        }
        Err(e) => panic!("{test}: the GPU is present but unusable: {e}"),
    }
}

/// A small GPT on the first 20 kB of Shakespeare, on `backend`, written into `dir`.
fn spec(dir: &Path, backend: &str, extra_top: &str) -> JobSpec {
    convoy_testkit::specs::write_shakespeare(dir, 20_000);
    let spec = format!(
        r#"
name = "gpu-tiny"
backend = "{backend}"
steps = 10
batch_size = 4
seq_len = 32
{extra_top}
[model]
kind = "gpt"
n_layer = 2
n_head = 4
n_embd = 64
context = 32
[data]
kind = "text"
files = ["text.txt"]
tokenizer = "byte"
[optimizer]
lr = 3e-3
weight_decay = 0.1
grad_clip = 1.0
[schedule]
kind = "cosine"
warmup_steps = 2
"#
    );
    let path = dir.join(format!("{backend}.toml"));
    std::fs::write(&path, spec).expect("write spec");
    JobSpec::load(&path).expect("valid spec")
}

fn tokens(n: usize, vocab: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 7) % vocab as u32)
        .collect()
}

/// Tolerances of one forward and backward against the CPU (relative to the loss, to each
/// tensor's largest gradient, and to 1 + |logit|).
#[derive(Clone, Copy)]
struct Tolerance {
    loss: f64,
    grad: f32,
    logit: f32,
}

/// Whether `dev` is convoy's PTX interpreter (emu/cuda), which has no cuBLASLt.
fn emulated(dev: &Device) -> bool {
    dev.ctx
        .name()
        .is_ok_and(|n| n.starts_with("convoy emulated"))
}

/// The cuBLASLt GEMMs, on a GPU only: the interpreter cannot run NVIDIA's closed library, so
/// under it they are skipped with the reason printed.
fn with_cublaslt(dev: &Device) -> bool {
    if emulated(dev) {
        eprintln!("cuBLASLt choices skipped: the PTX interpreter cannot run NVIDIA's library");
        return false;
    }
    true
}

/// The kernel choices a spec can make for a precision: each is checked against the CPU.
fn kernel_choices(dev: &Device, precision: Precision) -> Vec<KernelSpec> {
    let mut all = vec![KernelSpec::default()];
    if with_cublaslt(dev) {
        all.push(KernelSpec {
            gemm: GemmKernels::Cublaslt,
            ..KernelSpec::default()
        });
    }
    if precision == Precision::Bf16 {
        all.push(KernelSpec {
            attention: AttentionKernels::Flash,
            ..KernelSpec::default()
        });
    }
    all
}

fn forward_and_backward_against_the_cpu(
    dev: Arc<Device>,
    precision: Precision,
    kernels: KernelSpec,
    tol: Tolerance,
) {
    eprintln!("{precision:?} with {kernels:?}");
    let cfg = GptConfig {
        max_seq_len: 32,
        vocab_size: 100,
        padded_vocab_size: 128,
        n_layer: 2,
        n_head: 4,
        channels: 64,
    };
    let (b, t) = (3, 32);
    let inputs = tokens(b * t, cfg.vocab_size, 1);
    let mut targets = tokens(b * t, cfg.vocab_size, 2);
    targets[5] = convoy_kernels::IGNORE_INDEX;
    let mut cpu = Gpt::new(cfg, 7);
    let mut gpu =
        GptCuda::new(dev.clone(), cfg, cpu.params(), 2, precision, kernels).expect("upload");

    let (cpu_sum, cpu_n) = cpu.forward(&inputs, Some(&targets), Some(1.0), b, t);
    cpu.backward(&inputs, &mut |_, _| Ok(()))
        .expect("cpu backward");
    let (gpu_sum, gpu_n) = gpu
        .forward(&inputs, Some(&targets), Some(1.0), b, t)
        .expect("gpu forward");
    let mut buckets = 0;
    gpu.backward(&mut |_, _| {
        buckets += 1;
        Ok(())
    })
    .expect("gpu backward");
    assert_eq!(
        buckets,
        cpu.grad_buckets().len(),
        "every bucket announced once"
    );
    assert_eq!(gpu_n, cpu_n);
    assert!(
        (gpu_sum - cpu_sum).abs() <= tol.loss * cpu_sum.abs(),
        "loss sum: gpu {gpu_sum} vs cpu {cpu_sum}"
    );

    let grads = dev.stream.clone_dtoh(gpu.grads()).expect("download");
    for tensor in TENSORS {
        let r = cfg.range(tensor);
        let (g, c) = (&grads[r.clone()], &cpu.grads()[r]);
        let scale = c.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        for (i, (x, y)) in g.iter().zip(c).enumerate() {
            assert!(
                (x - y).abs() <= tol.grad * scale + 1e-7,
                "{}[{i}]: gpu {x} vs cpu {y} (largest |grad| {scale})",
                tensor.name()
            );
        }
    }

    // Inference: the logits of the last position, as sampling uses them.
    let window = &inputs[..20];
    let cpu_logits = cpu.next_token_logits(window).to_vec();
    let gpu_logits = gpu.next_token_logits(window).expect("gpu logits");
    for (i, (x, y)) in gpu_logits.iter().zip(&cpu_logits).enumerate() {
        assert!(
            (x - y).abs() <= tol.logit * (1.0 + y.abs()),
            "logit {i}: {x} vs {y}"
        );
    }
}

#[test]
fn forward_and_backward_match_the_cpu() {
    let Some(dev) = gpu_or_skip("forward_and_backward_match_the_cpu") else {
        return;
    };
    let tol = Tolerance {
        loss: 1e-5,
        grad: 1e-4,
        logit: 1e-5,
    };
    for kernels in kernel_choices(&dev, Precision::Fp32) {
        forward_and_backward_against_the_cpu(dev.clone(), Precision::Fp32, kernels, tol);
    }
}

/// bf16 carries 8 significant bits: each stored activation and each product operand is off by
/// at most 2^-8 ≈ 4e-3 of its value. Products and row sums average those roundings rather
/// than adding them, and the two layers here compound a few of them, so the bf16 model
/// agrees with the fp32 CPU to about 1e-2 of each quantity's scale (gradients, which go
/// through the most rounded values, to a few 1e-2), and a wrong op (a missing term, a wrong
/// transpose, a wrong storage type) is off by the quantity's whole scale.
#[test]
fn bf16_forward_and_backward_match_the_cpu_to_bf16_precision() {
    let Some(dev) = gpu_or_skip("bf16_forward_and_backward_match_the_cpu") else {
        return;
    };
    let tol = Tolerance {
        loss: 1e-2,
        grad: 5e-2,
        logit: 2e-2,
    };
    for kernels in kernel_choices(&dev, Precision::Bf16) {
        forward_and_backward_against_the_cpu(dev.clone(), Precision::Bf16, kernels, tol);
    }
}

#[test]
fn ten_steps_follow_the_cpu_trajectory() {
    let Some(dev) = gpu_or_skip("ten_steps_follow_the_cpu_trajectory") else {
        return;
    };
    trajectory_against_the_cpu("", 1e-3);
    if with_cublaslt(&dev) {
        trajectory_against_the_cpu("[kernels]\ngemm = \"cublaslt\"", 1e-3);
    }
}

/// bf16 activations and products put ~1e-2 relative noise into every step (see the bf16 forward test);
/// over ten steps the losses still follow the CPU's to a few percent.
#[test]
fn bf16_training_follows_the_cpu_trajectory() {
    let Some(dev) = gpu_or_skip("bf16_training_follows_the_cpu_trajectory") else {
        return;
    };
    trajectory_against_the_cpu("precision = \"bf16\"", 3e-2);
    if with_cublaslt(&dev) {
        trajectory_against_the_cpu("precision = \"bf16\"\n[kernels]\ngemm = \"cublaslt\"", 3e-2);
    }
    trajectory_against_the_cpu(
        "precision = \"bf16\"\n[kernels]\nattention = \"flash\"",
        3e-2,
    );
}

fn trajectory_against_the_cpu(gpu_extra: &str, rtol: f64) {
    eprintln!("trajectory with {gpu_extra:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cpu =
        Trainer::new(&spec(dir.path(), "cpu", ""), Box::new(SingleProcess)).expect("cpu trainer");
    let mut gpu = Trainer::new(
        &spec(dir.path(), "cuda", gpu_extra),
        Box::new(SingleProcess),
    )
    .expect("gpu trainer");
    for step in 1..=10 {
        let c = cpu.train_step().expect("cpu step");
        let g = gpu.train_step().expect("gpu step");
        assert!(
            (g.loss - c.loss).abs() <= rtol * c.loss.abs(),
            "step {step}: gpu loss {} vs cpu {}",
            g.loss,
            c.loss
        );
        assert!(
            f64::from((g.grad_norm - c.grad_norm).abs()) <= rtol * f64::from(c.grad_norm.abs()),
            "step {step}: gpu grad norm {} vs cpu {}",
            g.grad_norm,
            c.grad_norm
        );
    }
    let (c, g) = (cpu.evaluate().expect("eval"), gpu.evaluate().expect("eval"));
    let (c, g) = (c.expect("val data"), g.expect("val data"));
    assert!((g.val_loss - c.val_loss).abs() <= rtol * c.val_loss);
}

#[test]
fn the_same_spec_gives_bit_identical_parameters_and_resumes_bit_exactly() {
    let Some(_dev) = gpu_or_skip("the_same_spec_gives_bit_identical_parameters") else {
        return;
    };
    // fp32 with convoy's kernels, and bf16 with flash attention (whose backward gives every
    // gradient element one owner, so it promises the same determinism).
    for extra in ["", "precision = \"bf16\"\n[kernels]\nattention = \"flash\""] {
        eprintln!("determinism and resume with {extra:?}");
        determinism_and_resume(extra);
    }
}

fn determinism_and_resume(extra: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = spec(dir.path(), "cuda", extra);
    let run = |steps: u64| {
        let mut t = Trainer::new(&spec, Box::new(SingleProcess)).expect("trainer");
        for _ in 0..steps {
            t.train_step().expect("step");
        }
        t
    };
    let straight = run(6).state().expect("state");
    let again = run(6).state().expect("state");
    assert_eq!(bits(&straight.params), bits(&again.params), "run to run");

    let half = run(3).state().expect("state");
    let mut resumed = Trainer::new(&spec, Box::new(SingleProcess)).expect("trainer");
    resumed.restore(half).expect("restore");
    for _ in 0..3 {
        resumed.train_step().expect("step");
    }
    let resumed = resumed.state().expect("state");
    assert_eq!(resumed.step, 6);
    assert_eq!(
        bits(&resumed.params),
        bits(&straight.params),
        "resumed params"
    );
    assert_eq!(
        bits(&resumed.optimizer.m),
        bits(&straight.optimizer.m),
        "moments"
    );
    assert_eq!(
        bits(&resumed.optimizer.v),
        bits(&straight.optimizer.v),
        "moments"
    );
}

#[test]
fn a_batch_too_big_for_the_gpu_names_what_it_needs() {
    let Some(dev) = gpu_or_skip("a_batch_too_big_for_the_gpu_names_what_it_needs") else {
        return;
    };
    let cfg = GptConfig {
        max_seq_len: 1024,
        vocab_size: 100,
        padded_vocab_size: 128,
        n_layer: 2,
        n_head: 4,
        channels: 64,
    };
    let params = vec![0.0f32; cfg.num_params()];
    let mut gpu =
        GptCuda::new(dev, cfg, &params, 2, Precision::Fp32, KernelSpec::default()).expect("upload");
    // The attention maps alone: 2 layers × 2 (preatt, att) × B·NH·T² floats ≈ 275 GB at B = 1024.
    let e = gpu
        .reserve(1024, 1024, true)
        .expect_err("no GPU holds that batch")
        .to_string();
    assert!(e.contains("out of GPU memory"), "{e}");
    assert!(e.contains("needs an estimated"), "{e}");
    assert!(e.contains("activations"), "{e}");
    // The model is still usable at a batch that fits.
    gpu.reserve(2, 64, true).expect("a small batch fits");
}
