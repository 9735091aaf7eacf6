//! World N with batch B per rank trains the same model as world 1 with batch N·B: the loader
//! gives rank r the r-th B·T slice of each global batch, and the ring averages the gradients.

mod common;

use std::path::Path;
use std::time::Duration;

use convoy_collective::{Ring, RingReducer};
use convoy_engine::collective::SingleProcess;
use convoy_engine::spec::JobSpec;
use convoy_engine::train::Trainer;
use convoy_testkit::bits;
use convoy_testkit::specs::TinyGpt;

const STEPS: usize = 3;

/// The tiny GPT of the engine's trainer tests, without shuffling.
fn tiny_spec(dir: &Path) -> JobSpec {
    let spec = TinyGpt {
        data: "shuffle = false",
        ..TinyGpt::default()
    };
    JobSpec::load(&spec.write(dir)).expect("valid spec")
}

/// Parameters of each rank after `STEPS` steps of `spec` on a ring of `spec.world_size`.
fn train_ring(spec: &JobSpec) -> Vec<Vec<f32>> {
    let world = spec.world_size;
    let (ls, addrs) = common::listeners(world);
    let spec = spec.clone();
    common::per_rank(ls, move |rank, l| {
        let cfg = common::config(rank, &addrs, 1, Duration::from_secs(20));
        let ring = Ring::connect(cfg, l).expect("ring");
        let reducer = RingReducer::new(ring).expect("reducer");
        let mut t = Trainer::new(&spec, Box::new(reducer)).expect("trainer");
        for _ in 0..STEPS {
            t.train_step().expect("step");
        }
        t.model().params().to_vec()
    })
}

#[test]
fn world_n_with_batch_b_equals_world_1_with_batch_nb() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = tiny_spec(dir.path());
    let mut single = Trainer::new(&base, Box::new(SingleProcess)).expect("trainer");
    for _ in 0..STEPS {
        single.train_step().expect("step");
    }
    let reference = single.model().params().to_vec();

    for (world, batch) in [(2, 2), (4, 1)] {
        let mut spec = base.clone();
        spec.world_size = world;
        spec.batch_size = batch;
        let ranks = train_ring(&spec);
        for (r, p) in ranks.iter().enumerate().skip(1) {
            assert_eq!(
                bits(p),
                bits(&ranks[0]),
                "world {world}: rank {r} differs from rank 0"
            );
        }
        let diff = ranks[0]
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            diff <= 1e-5,
            "world {world}: parameters differ from world 1 by {diff}"
        );
        assert!(
            bits(&ranks[0]) != bits(&base_params(&base)),
            "training moved the parameters"
        );
    }
}

fn base_params(spec: &JobSpec) -> Vec<f32> {
    Trainer::new(spec, Box::new(SingleProcess))
        .expect("trainer")
        .model()
        .params()
        .to_vec()
}
