//! Helpers shared by the coordinator's integration tests.
#![allow(dead_code)]

pub mod files;
pub mod random;

use convoy_coordinator::{
    ClusterConfig, ClusterState, Command, Decision, Effect, JobId, Millis, SubmitJob, WorkerId,
    schedule_at,
};
pub use convoy_testkit::specs::mlp_text as spec;

pub fn cluster() -> ClusterState {
    // The timings in these tests were written for a 15 s heartbeat timeout.
    ClusterState::new(ClusterConfig {
        heartbeat_timeout: 15_000,
        restart_delay: 0,
        ..ClusterConfig::default()
    })
}

pub fn submit_cmd(name: &str, n: usize, priority: i32, now: Millis) -> Command {
    let mut s = SubmitJob::parse(&spec(name, n, "cpu"), &format!("{name}.toml"), now)
        .expect("a valid spec");
    s.priority = priority;
    Command::SubmitJob(s)
}

pub fn submit(state: &mut ClusterState, name: &str, n: usize, priority: i32) -> JobId {
    let effects = state
        .apply(&submit_cmd(name, n, priority, 0))
        .expect("submit");
    match effects.as_slice() {
        [Effect::JobSubmitted { job }] => *job,
        other => panic!("unexpected effects {other:?}"),
    }
}

pub fn worker(state: &mut ClusterState, name: &str, slots: u32) -> WorkerId {
    let cmd = Command::RegisterWorker {
        name: name.into(),
        slots,
        gpus: 0,
        instance: "test".into(),
        now: 0,
    };
    match state.apply(&cmd).expect("register").as_slice() {
        [Effect::WorkerRegistered { worker }] => *worker,
        other => panic!("unexpected effects {other:?}"),
    }
}

/// Runs the scheduler and applies every decision; returns the decisions.
pub fn run_scheduler(state: &mut ClusterState, now: Millis) -> Vec<Decision> {
    let plan = schedule_at(state, now);
    for d in &plan.starts {
        state
            .apply(&d.clone().into_command(now))
            .expect("a scheduler decision applies");
    }
    plan.starts
}

/// Starts `job` on an explicit placement as its next generation.
pub fn start(state: &mut ClusterState, job: JobId, placement: &[WorkerId], now: Millis) -> u64 {
    let generation = state.jobs[&job].next_generation();
    state
        .apply(&Command::StartAttempt {
            job,
            generation,
            placement: placement.to_vec(),
            now,
        })
        .expect("start");
    generation
}
