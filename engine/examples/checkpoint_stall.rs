//! How long a checkpoint blocks the training loop: `Trainer::state()` (the copy of parameters,
//! optimizer moments and position that the background upload then works from) against a plain
//! copy of the same number of bytes, interleaved, medians of `--reps`.
//!
//! `cargo run --release -p convoy-engine --example checkpoint_stall -- bench/gpt-cpu.toml 9`

use std::time::Instant;

use convoy_engine::collective::SingleProcess;
use convoy_engine::spec::JobSpec;
use convoy_engine::train::Trainer;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: checkpoint_stall SPEC [REPS]")?;
    let reps: usize = args.next().map_or(Ok(9), |r| r.parse())?;
    let mut spec = JobSpec::load(std::path::Path::new(&path))?;
    spec.world_size = 1;
    let mut trainer = Trainer::new(&spec, Box::new(SingleProcess))?;
    // One step, so the optimizer moments exist and hold real values.
    trainer.train_step()?;
    let probe = trainer.state().expect("state");
    let floats = probe.params.len() + probe.optimizer.m.len() + probe.optimizer.v.len();
    let source: Vec<f32> = (0..floats).map(|i| i as f32).collect();
    drop(probe);
    let (mut state_s, mut copy_s) = (vec![], vec![]);
    for _ in 0..reps {
        let t = Instant::now();
        let s = trainer.state().expect("state");
        state_s.push(t.elapsed().as_secs_f64());
        drop(s);
        let t = Instant::now();
        let c = source.clone();
        copy_s.push(t.elapsed().as_secs_f64());
        std::hint::black_box(&c);
        drop(c);
    }
    let (s, c) = (median(state_s), median(copy_s));
    println!(
        "{} floats ({:.1} MiB): Trainer::state() median {:.2} ms, plain copy median {:.2} ms, \
         ratio {:.2} (target <= 1.2)",
        floats,
        (floats * 4) as f64 / (1 << 20) as f64,
        s * 1e3,
        c * 1e3,
        s / c
    );
    Ok(())
}
