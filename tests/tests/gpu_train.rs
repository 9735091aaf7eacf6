//! `convoy train` with `backend = "cuda"` as a user runs it: a tiny GPT for a few steps in fp32
//! and bf16, with convoy's attention and with flash attention, against the CPU backend, and
//! bit-identical on a rerun. Needs a GPU, or the PTX interpreter standing in for one (the
//! emulated GPU pass, emu/gpu_tests.sh); skips without either unless CONVOY_REQUIRE_GPU is set.

use std::path::Path;

use convoy_testkit::{convoy, repo_root};
use serde_json::Value;

fn gpu_or_skip(test: &str) -> bool {
    if convoy_kernels::cuda::device_count() > 0 {
        return true;
    }
    assert!(
        std::env::var_os("CONVOY_REQUIRE_GPU").is_none(),
        "{test}: CONVOY_REQUIRE_GPU is set but no GPU (or stand-in driver) is visible"
    );
    eprintln!("{test}: skipped (no CUDA driver or no GPU on this machine)");
    false
}

/// A 2-layer GPT on 20 kB of Shakespeare for 8 steps; `extra` goes at the top level.
fn write_spec(dir: &Path, name: &str, backend: &str, extra: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("examples/data/tinyshakespeare.txt"))
        .expect("data");
    std::fs::write(dir.join("text.txt"), &text[..20_000]).expect("write");
    let spec = format!(
        "name = \"{name}\"\nbackend = \"{backend}\"\nsteps = 8\nbatch_size = 4\nseq_len = 32\n\
         {extra}\n\
         [model]\nkind = \"gpt\"\nn_layer = 2\nn_head = 4\nn_embd = 64\ncontext = 32\n\
         [data]\nkind = \"text\"\nfiles = [\"text.txt\"]\ntokenizer = \"byte\"\n\
         [optimizer]\nlr = 3e-3\nweight_decay = 0.1\ngrad_clip = 1.0\n"
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, spec).expect("spec");
    path.to_str().expect("utf-8").to_string()
}

/// Runs `convoy train SPEC --json --export OUT`; the step losses and the exported weights.
fn train(spec: &str, export: &Path) -> (Vec<f64>, Vec<u8>) {
    let out = convoy(&[
        "train",
        spec,
        "--json",
        "--export",
        export.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "convoy train {spec}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let losses = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
        .filter(|e| e["event"] == "step")
        .map(|e| e["loss"].as_f64().expect("loss"))
        .collect();
    (losses, std::fs::read(export).expect("exported weights"))
}

fn assert_follows(what: &str, gpu: &[f64], cpu: &[f64], rtol: f64) {
    assert_eq!(gpu.len(), 8, "{what}: one loss per step");
    assert_eq!(gpu.len(), cpu.len());
    for (step, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        assert!(
            (g - c).abs() <= rtol * c.abs(),
            "{what}, step {}: cuda loss {g} vs cpu {c} (rtol {rtol})",
            step + 1
        );
    }
}

/// fp32 follows the CPU to 1e-3 (sums in other orders, fused multiply-adds); bf16 carries 8
/// significant bits and follows to a few percent (engine/tests/gpu_gpt.rs explains both).
#[test]
fn convoy_train_on_cuda_follows_the_cpu_and_repeats_bit_exactly() {
    if !gpu_or_skip("convoy_train_on_cuda_follows_the_cpu_and_repeats_bit_exactly") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (cpu, _) = train(&write_spec(d, "cpu", "cpu", ""), &d.join("cpu.bin"));
    let fp32 = write_spec(d, "fp32", "cuda", "");
    let (first, first_weights) = train(&fp32, &d.join("fp32-a.bin"));
    assert_follows("fp32", &first, &cpu, 1e-3);
    let (again, again_weights) = train(&fp32, &d.join("fp32-b.bin"));
    assert_eq!(
        first.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
        again.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
        "a rerun gives the same losses"
    );
    assert!(
        first_weights == again_weights,
        "a rerun gives the same weights"
    );

    for (name, extra) in [
        ("bf16", "precision = \"bf16\""),
        (
            "bf16-flash",
            "precision = \"bf16\"\n[kernels]\nattention = \"flash\"",
        ),
    ] {
        let spec = write_spec(d, name, "cuda", extra);
        let (a, a_weights) = train(&spec, &d.join(format!("{name}-a.bin")));
        assert_follows(name, &a, &cpu, 3e-2);
        let (b, b_weights) = train(&spec, &d.join(format!("{name}-b.bin")));
        assert!(
            a.iter()
                .map(|l| l.to_bits())
                .eq(b.iter().map(|l| l.to_bits()))
                && a_weights == b_weights,
            "{name}: a rerun gives the same losses and weights"
        );
    }
}
