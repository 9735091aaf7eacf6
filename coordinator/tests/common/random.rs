//! Seeded random command sequences for the property, determinism and recovery tests.

use convoy_coordinator::{
    ClusterState, Command, JobId, RankExit, SubmitJob, WorkerId, schedule_at,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::spec;

/// Produces commands that depend on the current state (so most are valid), with some invalid
/// ones mixed in (unknown ids, stale generations, bogus placements).
pub struct Gen {
    rng: ChaCha8Rng,
    pub now: u64,
}

impl Gen {
    pub fn new(seed: u64) -> Self {
        Gen {
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: 0,
        }
    }

    pub fn next(&mut self, s: &ClusterState) -> Command {
        self.now += self.rng.random_range(0..3_000);
        let now = self.now;
        let jobs = s.jobs.len() as u64;
        let workers = s.workers.len() as u64;
        let job = JobId(self.rng.random_range(1..=jobs + 1));
        let worker = WorkerId(self.rng.random_range(1..=workers + 1));
        match self.rng.random_range(0..100) {
            0..10 => {
                let n = self.rng.random_range(0..=4);
                let backend = if self.rng.random_bool(0.1) {
                    "cuda"
                } else {
                    "cpu"
                };
                let mut sub = SubmitJob::parse(&spec("j", n.max(1), backend), "j.toml", now)
                    .expect("a valid spec");
                // An inconsistent summary: the state machine must reject it unchanged.
                sub.world_size = n;
                sub.priority = self.rng.random_range(-1..=1);
                sub.max_restarts = self.rng.random_range(0..3);
                sub.progress_timeout = Some(self.rng.random_range(2_000..20_000));
                Command::SubmitJob(sub)
            }
            10..16 => Command::RegisterWorker {
                name: format!("w{}", self.rng.random_range(0..5)),
                slots: self.rng.random_range(0..5),
                gpus: self.rng.random_range(0..2),
                instance: "test".into(),
                now,
            },
            16..36 => Command::Heartbeat { worker, now },
            36..39 => Command::Cordon { worker },
            39..42 => Command::Uncordon { worker },
            42..44 => Command::CancelJob { job, now },
            44..60 => {
                let plan = schedule_at(s, now);
                if let Some(d) = plan.starts.into_iter().next() {
                    d.into_command(now)
                } else {
                    Command::Tick { now }
                }
            }
            60..63 => {
                let n = self.rng.random_range(0..4);
                Command::StartAttempt {
                    job,
                    generation: self.rng.random_range(0..4),
                    placement: (0..n)
                        .map(|_| WorkerId(self.rng.random_range(1..=workers + 1)))
                        .collect(),
                    now,
                }
            }
            63..85 => {
                let (generation, ranks) = s
                    .jobs
                    .get(&job)
                    .and_then(|j| j.attempts.last())
                    .map_or((1, 1), |a| (a.generation, a.placement.len()));
                let generation = if self.rng.random_bool(0.1) {
                    generation.saturating_sub(1)
                } else {
                    generation
                };
                let rank = self.rng.random_range(0..=ranks);
                let exit = if self.rng.random_bool(0.25) {
                    RankExit::Failure {
                        status: 1,
                        log_tail: "error".into(),
                    }
                } else {
                    RankExit::Success
                };
                if self.rng.random_bool(0.4) {
                    Command::ReportProgress {
                        job,
                        generation,
                        step: self.rng.random_range(0..100),
                        now,
                    }
                } else {
                    Command::ReportRankExit {
                        job,
                        generation,
                        rank,
                        exit,
                        now,
                    }
                }
            }
            _ => Command::Tick { now },
        }
    }
}
