//! The step loop end to end on the CPU backend: determinism, bit-exact resume, gradient
//! accumulation, the all-reduce contract and non-finite losses.

mod common;

use std::ops::Range;
use std::path::Path;

use common::{tiny, train};
use convoy_engine::EngineError;
use convoy_engine::collective::{GradReducer, SingleProcess};
use convoy_engine::model::gpt::{Gpt, GptConfig, Tensor};
use convoy_engine::model::llmc;
use convoy_engine::spec::JobSpec;
use convoy_engine::state;
use convoy_engine::train::{Event, StopToken, Trainer};
use convoy_testkit::bits;
use convoy_testkit::specs::TinyGpt;

/// The tiny GPT (cosine schedule, weight decay) with extra top-level and `[data]` keys.
fn tiny_spec(dir: &Path, extra_top: &str, extra_data: &str) -> JobSpec {
    tiny(
        dir,
        TinyGpt {
            top: extra_top,
            data: extra_data,
            ..TinyGpt::default()
        },
    )
}

#[test]
fn same_spec_gives_bit_identical_parameters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = tiny_spec(dir.path(), "", "shuffle = true");
    let a = train(&spec, 5);
    let b = train(&spec, 5);
    assert_eq!(bits(a.model().params()), bits(b.model().params()));
    let c = train(&tiny_spec(dir.path(), "seed = 2", "shuffle = true"), 5);
    assert_ne!(
        bits(a.model().params()),
        bits(c.model().params()),
        "the seed matters"
    );
}

#[test]
fn resumed_job_continues_bit_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = tiny_spec(dir.path(), "", "shuffle = true");
    let mut straight = Trainer::new(&spec, Box::new(SingleProcess)).expect("trainer");
    let losses: Vec<f64> = (0..8)
        .map(|_| straight.train_step().expect("step").loss)
        .collect();

    let first = train(&spec, 4);
    let path = dir.path().join("state.bin");
    state::save(&path, &first.state().expect("state")).expect("save");
    drop(first);
    let mut resumed = Trainer::new(&spec, Box::new(SingleProcess)).expect("trainer");
    resumed
        .restore(state::load(&path).expect("load"))
        .expect("restore");
    assert_eq!(resumed.step(), 4);
    let resumed_losses: Vec<f64> = (0..4)
        .map(|_| resumed.train_step().expect("step").loss)
        .collect();
    assert_eq!(resumed_losses, losses[4..]);
    assert_eq!(
        bits(resumed.model().params()),
        bits(straight.model().params())
    );

    // A truncated state file is an error, not garbage.
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    let e = state::load(&path).expect_err("truncated state").to_string();
    assert!(e.contains("state.bin") && e.contains("truncated"), "{e}");
}

/// Another thread (a rank's reporter hearing that its attempt is over) stops the loop: it
/// returns before the next step, with the reason, instead of the process exiting under it.
#[test]
fn a_stop_token_ends_the_loop_before_the_next_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = tiny_spec(dir.path(), "", "");
    let mut t = Trainer::new(&spec, Box::new(SingleProcess)).expect("trainer");
    let stop = StopToken::new();
    let result = t.run(
        &mut |event| {
            if let Event::Step(m) = event
                && m.step == 3
            {
                stop.stop("the attempt was superseded");
                stop.stop("a later reason is not the one reported");
            }
        },
        &stop,
    );
    match result {
        Err(EngineError::Stopped { step: 3, reason }) => {
            assert_eq!(reason, "the attempt was superseded")
        }
        other => panic!("expected a stop after step 3, got {other:?}"),
    }
    assert_eq!(t.step(), 3);
    // A token nobody stops lets the loop run to the end.
    let mut t = Trainer::new(&spec, Box::new(SingleProcess)).expect("trainer");
    let summary = t.run(&mut |_| {}, &StopToken::new()).expect("runs");
    assert_eq!(summary.steps, spec.steps);
}

#[test]
fn gradient_accumulation_matches_a_bigger_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = tiny_spec(dir.path(), "", "");
    let mut small = big.clone();
    small.batch_size = 2;
    small.grad_accum = 2;
    let (a, b) = (train(&big, 3), train(&small, 3));
    let diff = a
        .model()
        .params()
        .iter()
        .zip(b.model().params())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(diff <= 1e-5, "parameters differ by {diff}");
}

/// Records what the trainer asks of the all-reduce, as a cluster implementation would see it.
#[derive(Default)]
struct Recorder {
    buckets: Vec<Vec<Range<usize>>>,
    finishes: usize,
}

impl GradReducer for Recorder {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn bucket_ready(&mut self, _g: &[f32], bucket: &[Range<usize>]) -> convoy_engine::Result<()> {
        self.buckets.push(bucket.to_vec());
        Ok(())
    }
    fn finish(&mut self, grads: &mut [f32]) -> convoy_engine::Result<()> {
        self.finishes += 1;
        // Every element announced exactly once per step.
        let mut covered = vec![0u8; grads.len()];
        for r in self.buckets.drain(..).flatten() {
            covered[r].iter_mut().for_each(|c| *c += 1);
        }
        assert!(
            covered.iter().all(|&c| c == 1),
            "buckets cover the gradient buffer exactly once"
        );
        Ok(())
    }
    fn sum_scalars(&mut self, _v: &mut [f64]) -> convoy_engine::Result<()> {
        Ok(())
    }
}

#[test]
fn every_gradient_is_announced_once_per_step_even_with_accumulation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = tiny_spec(dir.path(), "grad_accum = 3", "");
    spec.steps = 2;
    let mut t = Trainer::new(&spec, Box::new(Recorder::default())).expect("trainer");
    t.train_step().expect("step");
    t.train_step().expect("step");
}

#[test]
fn non_finite_loss_fails_naming_the_step_or_is_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = GptConfig {
        max_seq_len: 16,
        vocab_size: 256,
        padded_vocab_size: 256,
        n_layer: 2,
        n_head: 2,
        channels: 16,
    };
    let mut model = Gpt::new(cfg, 1);
    let lnfw = cfg.range(Tensor::Lnfw);
    use convoy_engine::model::Model;
    model.params_mut()[lnfw.start] = f32::NAN;
    let init = dir.path().join("nan.bin");
    llmc::write(&init, &cfg, model.params()).expect("write model");

    let spec = tiny_spec(dir.path(), "init_from = \"nan.bin\"", "");
    let mut t = Trainer::new(&spec, Box::new(SingleProcess)).expect("trainer");
    let e = t
        .train_step()
        .expect_err("NaN loss stops the job")
        .to_string();
    assert!(e.contains("step 1") && e.contains("NaN"), "{e}");

    let spec = tiny_spec(dir.path(), "init_from = \"nan.bin\"\non_nan = \"skip\"", "");
    let mut t = Trainer::new(&spec, Box::new(SingleProcess)).expect("trainer");
    let before = bits(t.model().params());
    let m = t.train_step().expect("skipped step");
    assert!(m.skipped);
    assert_eq!(
        bits(t.model().params()),
        before,
        "a skipped step leaves the parameters alone"
    );
}

#[test]
fn init_from_a_different_model_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = GptConfig {
        max_seq_len: 16,
        vocab_size: 256,
        padded_vocab_size: 256,
        n_layer: 3,
        n_head: 2,
        channels: 16,
    };
    let model = Gpt::new(cfg, 1);
    use convoy_engine::model::Model;
    llmc::write(&dir.path().join("other.bin"), &cfg, model.params()).expect("write");
    let spec = tiny_spec(dir.path(), "init_from = \"other.bin\"", "");
    let e = Trainer::new(&spec, Box::new(SingleProcess))
        .err()
        .expect("mismatch")
        .to_string();
    assert!(
        e.contains("other.bin") && e.contains("n_layer = 3") && e.contains("2"),
        "{e}"
    );
}

#[test]
fn parameters_do_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = tiny_spec(dir.path(), "", "shuffle = true");
    // Wide enough that the GEMMs split work across threads.
    spec.batch_size = 16;
    if let convoy_engine::spec::ModelSpec::Gpt(g) = &mut spec.model {
        g.n_embd = 64;
    }
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        pool.install(|| bits(train(&spec, 4).model().params()))
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

#[test]
fn a_state_from_another_model_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = tiny_spec(dir.path(), "", "");
    let state = train(&spec, 1).state().expect("state");
    let mut other = spec.clone();
    if let convoy_engine::spec::ModelSpec::Gpt(g) = &mut other.model {
        g.n_layer = 3;
    }
    let mut t = Trainer::new(&other, Box::new(SingleProcess)).expect("trainer");
    let e = t
        .restore(state)
        .expect_err("different architecture")
        .to_string();
    assert!(
        e.contains("cannot resume") && e.contains("n_layer=2") && e.contains("n_layer=3"),
        "{e}"
    );
}

#[test]
fn a_cuda_spec_needs_a_gpu_and_a_gpt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = tiny_spec(dir.path(), "backend = \"cuda\"", "");
    let made = Trainer::new(&spec, Box::new(SingleProcess));
    if convoy_kernels::cuda::device_count() == 0 {
        let e = made.err().expect("no GPU here").to_string();
        assert!(e.starts_with("GPU: backend = \"cuda\" but "), "{e}");
        assert!(e.contains("set backend = \"cpu\""), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    } else {
        made.expect("a GPU is present");
    }

    let mlp_path = dir.path().join("mlp.toml");
    std::fs::write(
        &mlp_path,
        std::fs::read_to_string(convoy_testkit::examples("digits-mlp.toml"))
            .expect("example")
            .replacen("[model]", "backend = \"cuda\"\n[model]", 1),
    )
    .expect("write");
    match JobSpec::load(&mlp_path) {
        Ok(mlp) => {
            let e = Trainer::new(&mlp, Box::new(SingleProcess))
                .err()
                .expect("the MLP trains on the CPU")
                .to_string();
            assert!(e.contains("trains GPT models"), "{e}");
        }
        Err(e) => panic!("the digits example with backend = cuda should parse: {e}"),
    }
}

/// The coordinator judges `init_from = "job:ID"` at submit from the checkpoint's fingerprint
/// and the spec alone (`JobSpec::loads_checkpoint_of`): what a model of a spec fingerprints
/// as must pass for that spec and fail for another architecture.
#[test]
fn a_spec_accepts_its_own_models_fingerprint_and_refuses_another_architecture() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gpt = tiny_spec(dir.path(), "", "");
    let gpt_state = Trainer::new(&gpt, Box::new(SingleProcess))
        .expect("trainer")
        .state()
        .expect("state");
    let mut mlp = JobSpec::load(&convoy_testkit::repo_root().join("examples/digits-mlp.toml"))
        .expect("example");
    mlp.steps = 1;
    let mlp_state = Trainer::new(&mlp, Box::new(SingleProcess))
        .expect("trainer")
        .state()
        .expect("state");
    assert_eq!(gpt.loads_checkpoint_of(&gpt_state.model), Ok(()));
    assert_eq!(mlp.loads_checkpoint_of(&mlp_state.model), Ok(()));
    let e = gpt
        .loads_checkpoint_of(&mlp_state.model)
        .expect_err("another kind");
    assert!(e.contains("mlp(") && e.contains("gpt(n_layer="), "{e}");
    assert!(mlp.loads_checkpoint_of(&gpt_state.model).is_err());
    let mut wider = tiny_spec(dir.path(), "", "");
    if let convoy_engine::spec::ModelSpec::Gpt(g) = &mut wider.model {
        g.n_embd *= 2;
    }
    assert!(wider.loads_checkpoint_of(&gpt_state.model).is_err());
}
