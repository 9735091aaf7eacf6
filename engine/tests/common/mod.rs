//! What the engine's test files share.

use std::path::Path;

use convoy_engine::collective::SingleProcess;
use convoy_engine::spec::JobSpec;
use convoy_engine::train::Trainer;
use convoy_testkit::specs::TinyGpt;

/// The testkit's tiny GPT written into `dir` and loaded.
pub fn tiny(dir: &Path, gpt: TinyGpt<'_>) -> JobSpec {
    JobSpec::load(&gpt.write(dir)).expect("valid spec")
}

/// A single-process trainer after `steps` steps of `spec`.
pub fn train(spec: &JobSpec, steps: u64) -> Trainer {
    let mut t = Trainer::new(spec, Box::new(SingleProcess)).expect("trainer");
    for _ in 0..steps {
        t.train_step().expect("step");
    }
    t
}
