//! Rules of the cluster state machine, one test per rule.

mod common;

use common::*;
use convoy_coordinator::{
    ApplyError, AttemptOutcome, Command, Cordon, Effect, JobId, JobState, Liveness, RankExit,
    SubmitJob, WorkerId,
};

fn fail(status: i32, tail: &str) -> RankExit {
    RankExit::Failure {
        status,
        log_tail: tail.into(),
    }
}

fn exit(job: JobId, generation: u64, rank: usize, exit: RankExit) -> Command {
    Command::ReportRankExit {
        job,
        generation,
        rank,
        exit,
        now: 100,
    }
}

#[test]
fn submit_parses_the_spec_and_returns_its_error_unchanged() {
    let mut s = cluster();
    let a = submit(&mut s, "a", 2, 5);
    let b = submit(&mut s, "b", 1, 0);
    assert_eq!((a, b), (JobId(1), JobId(2)));
    let job = &s.jobs[&a];
    assert_eq!(
        (job.name.as_str(), job.world_size, job.priority),
        ("a", 2, 5)
    );
    assert_eq!(job.state, JobState::Queued);
    assert!(s.jobs[&b].seq > job.seq);

    // A spec is validated once, before it becomes a command.
    let err = SubmitJob::parse(&spec("bad", 0, "cpu"), "bad.toml", 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.toml") && err.contains("world_size"),
        "{err}"
    );
}

#[test]
fn only_a_finished_job_is_deleted_and_its_id_is_never_reused() {
    let mut s = cluster();
    let mut sub = SubmitJob::parse(&spec("j", 1, "cpu"), "j.toml", 0).unwrap();
    sub.request_id = "req-1".into();
    s.apply(&Command::SubmitJob(sub.clone())).unwrap();
    let job = JobId(1);
    let before = s.clone();
    let err = s.apply(&Command::DeleteJob { job }).unwrap_err();
    assert!(matches!(err, ApplyError::NotFinished { .. }), "{err}");
    assert_eq!(s, before);
    s.apply(&Command::CancelJob { job, now: 1 }).unwrap();
    assert_eq!(
        s.apply(&Command::DeleteJob { job }).unwrap(),
        vec![Effect::JobDeleted { job }]
    );
    assert!(s.jobs.is_empty() && s.requests.is_empty());
    // The request id is free again, and the next job gets a new id.
    let fx = s.apply(&Command::SubmitJob(sub)).unwrap();
    assert_eq!(fx, vec![Effect::JobSubmitted { job: JobId(2) }]);
    assert_eq!(
        s.apply(&Command::DeleteJob { job }).unwrap_err(),
        ApplyError::UnknownJob(job)
    );
}

#[test]
fn a_retried_submission_returns_the_job_the_first_try_created() {
    let mut s = cluster();
    let mut sub = SubmitJob::parse(&spec("j", 1, "cpu"), "j.toml", 0).unwrap();
    sub.request_id = "req-1".into();
    let first = s.apply(&Command::SubmitJob(sub.clone())).unwrap();
    let again = s.apply(&Command::SubmitJob(sub.clone())).unwrap();
    assert_eq!(first, again);
    assert_eq!(s.jobs.len(), 1);
    // The same id for another spec is a client bug, not a retry.
    let before = s.clone();
    let mut other = SubmitJob::parse(&spec("k", 2, "cpu"), "k.toml", 0).unwrap();
    other.request_id = "req-1".into();
    let err = s.apply(&Command::SubmitJob(other)).unwrap_err();
    assert!(matches!(err, ApplyError::RequestReused { .. }), "{err}");
    assert_eq!(s, before);
    // Without an id, every request is a new job.
    sub.request_id.clear();
    s.apply(&Command::SubmitJob(sub.clone())).unwrap();
    s.apply(&Command::SubmitJob(sub)).unwrap();
    assert_eq!(s.jobs.len(), 3);
}

#[test]
fn unknown_ids_are_errors_naming_the_id() {
    let mut s = cluster();
    let e = s
        .apply(&Command::CancelJob {
            job: JobId(42),
            now: 0,
        })
        .unwrap_err();
    assert_eq!(e.to_string(), "unknown job job-42");
    let e = s
        .apply(&Command::Heartbeat {
            worker: WorkerId(7),
            now: 0,
        })
        .unwrap_err();
    assert_eq!(e.to_string(), "unknown worker worker-7");
    let e = s
        .apply(&Command::Cordon {
            worker: WorkerId(9),
        })
        .unwrap_err();
    assert_eq!(e, ApplyError::UnknownWorker(WorkerId(9)));
}

#[test]
fn the_same_daemon_reconnecting_keeps_its_id_and_its_running_attempt() {
    let mut s = cluster();
    let w = worker(&mut s, "host-a", 1);
    let job = submit(&mut s, "j", 1, 0);
    run_scheduler(&mut s, 0);
    // After a coordinator restart the daemon registers again with its own instance token.
    let effects = s
        .apply(&Command::RegisterWorker {
            name: "host-a".into(),
            slots: 1,
            gpus: 0,
            instance: "test".into(),
            now: 10,
        })
        .unwrap();
    assert_eq!(effects, vec![Effect::WorkerRegistered { worker: w }]);
    assert_eq!(s.jobs[&job].state, JobState::Running);
    assert!(s.jobs[&job].live_attempt().is_some());
}

#[test]
fn duplicate_alive_name_is_rejected_but_a_lost_worker_re_registers_with_its_id() {
    let mut s = cluster();
    let w = worker(&mut s, "host-a", 2);
    let err = s
        .apply(&Command::RegisterWorker {
            name: "host-a".into(),
            slots: 4,
            gpus: 0,
            instance: "another-daemon".into(),
            now: 1,
        })
        .unwrap_err();
    assert_eq!(
        err,
        ApplyError::DuplicateWorker {
            name: "host-a".into(),
            id: w
        }
    );
    // Silent past the timeout: lost; heartbeats are refused until it registers again.
    let effects = s.apply(&Command::Tick { now: 20_000 }).unwrap();
    assert_eq!(effects, vec![Effect::WorkerLost { worker: w }]);
    assert_eq!(s.workers[&w].liveness, Liveness::Lost);
    let err = s
        .apply(&Command::Heartbeat {
            worker: w,
            now: 20_001,
        })
        .unwrap_err();
    assert_eq!(err, ApplyError::WorkerLost { worker: w });
    let effects = s
        .apply(&Command::RegisterWorker {
            name: "host-a".into(),
            slots: 4,
            gpus: 0,
            instance: "test".into(),
            now: 20_002,
        })
        .unwrap();
    assert_eq!(effects, vec![Effect::WorkerRegistered { worker: w }]);
    assert_eq!(s.workers.len(), 1);
    assert_eq!(s.workers[&w].slots, 4);
    assert_eq!(s.workers[&w].liveness, Liveness::Alive);
    assert!(
        s.apply(&Command::RegisterWorker {
            name: "host-b".into(),
            slots: 0,
            gpus: 0,
            instance: "test".into(),
            now: 0
        })
        .is_err()
    );
}

#[test]
fn a_job_succeeds_only_when_every_rank_exits_zero() {
    let mut s = cluster();
    let w1 = worker(&mut s, "a", 2);
    let w2 = worker(&mut s, "b", 2);
    let j = submit(&mut s, "j", 3, 0);
    let g = start(&mut s, j, &[w1, w1, w2], 10);
    assert_eq!(s.jobs[&j].state, JobState::Running);
    assert_eq!(s.apply(&exit(j, g, 0, RankExit::Success)).unwrap(), vec![]);
    assert_eq!(s.apply(&exit(j, g, 2, RankExit::Success)).unwrap(), vec![]);
    assert_eq!(s.jobs[&j].state, JobState::Running);
    let err = s.apply(&exit(j, g, 2, RankExit::Success)).unwrap_err();
    assert!(matches!(err, ApplyError::DuplicateExit { rank: 2, .. }));
    let err = s.apply(&exit(j, g, 3, RankExit::Success)).unwrap_err();
    assert!(matches!(err, ApplyError::RankOutOfRange { rank: 3, .. }));
    let effects = s.apply(&exit(j, g, 1, RankExit::Success)).unwrap();
    assert_eq!(
        effects,
        vec![Effect::JobFinished {
            job: j,
            state: JobState::Succeeded
        }]
    );
    let a = &s.jobs[&j].attempts[0];
    assert_eq!(a.outcome, Some(AttemptOutcome::Succeeded));
    assert_eq!(a.ended_at, Some(100));
    assert!(s.usage().values().all(|u| u.slots == 0));
}

#[test]
fn a_failed_rank_stops_the_whole_gang_and_requeues_then_fails_after_max_restarts() {
    let mut s = cluster();
    let ws: Vec<WorkerId> = (0..3)
        .map(|i| worker(&mut s, &format!("w{i}"), 1))
        .collect();
    let mut sub = SubmitJob::parse(&spec("j", 3, "cpu"), "j.toml", 0).expect("a valid spec");
    sub.max_restarts = 1;
    s.apply(&Command::SubmitJob(sub)).unwrap();
    let j = JobId(1);

    let g1 = start(&mut s, j, &ws, 10);
    let effects = s.apply(&exit(j, g1, 1, fail(137, "killed\n"))).unwrap();
    let reason = format!("rank 1 on {} (w1) exited with status 137: killed", ws[1]);
    assert_eq!(
        effects,
        vec![
            Effect::StopRanks {
                job: j,
                generation: g1,
                workers: vec![ws[0], ws[2]]
            },
            Effect::JobRequeued {
                job: j,
                generation: g1,
                reason: reason.clone()
            },
        ]
    );
    assert_eq!(s.jobs[&j].state, JobState::Queued);

    // The stopped ranks' late exits belong to an ended generation.
    let err = s.apply(&exit(j, g1, 0, fail(143, ""))).unwrap_err();
    assert_eq!(
        err,
        ApplyError::AttemptEnded {
            job: j,
            generation: 1
        }
    );

    let g2 = start(&mut s, j, &ws, 20);
    assert_eq!(g2, 2);
    let effects = s.apply(&exit(j, g2, 0, fail(1, "boom"))).unwrap();
    let state = JobState::Failed {
        reason: format!(
            "rank 0 on {} (w0) exited with status 1: boom (attempt 2 of 2)",
            ws[0]
        ),
    };
    assert_eq!(
        effects.last(),
        Some(&Effect::JobFinished {
            job: j,
            state: state.clone()
        })
    );
    assert_eq!(s.jobs[&j].state, state);
}

#[test]
fn stale_generation_reports_are_rejected_naming_both_generations() {
    let mut s = cluster();
    let w = worker(&mut s, "a", 2);
    let j = submit(&mut s, "j", 2, 0);
    let g1 = start(&mut s, j, &[w, w], 0);
    s.apply(&exit(j, g1, 0, fail(1, ""))).unwrap();
    let g2 = start(&mut s, j, &[w, w], 5);
    let before = s.clone();
    let err = s
        .apply(&Command::ReportProgress {
            job: j,
            generation: g1,
            step: 9,
            now: 6,
        })
        .unwrap_err();
    assert_eq!(
        err,
        ApplyError::StaleGeneration {
            job: j,
            got: 1,
            current: 2
        }
    );
    assert_eq!(
        err.to_string(),
        "job-1: report for generation 1, but the current generation is 2"
    );
    let err = s.apply(&exit(j, g1, 1, RankExit::Success)).unwrap_err();
    assert!(matches!(
        err,
        ApplyError::StaleGeneration {
            got: 1,
            current: 2,
            ..
        }
    ));
    assert_eq!(s, before);
    s.apply(&Command::ReportProgress {
        job: j,
        generation: g2,
        step: 3,
        now: 7,
    })
    .unwrap();
    assert_eq!(s.jobs[&j].last_progress.map(|p| p.step), Some(3));
}

#[test]
fn start_attempt_rejects_bad_placements_and_generations_without_changing_state() {
    let mut s = cluster();
    let a = worker(&mut s, "a", 2);
    let b = worker(&mut s, "b", 1);
    let j = submit(&mut s, "j", 2, 0);
    let k = submit(&mut s, "k", 2, 0);
    start(&mut s, j, &[a, a], 0);
    let before = s.clone();
    let try_start =
        |s: &mut convoy_coordinator::ClusterState, job, generation, p: Vec<WorkerId>| {
            s.apply(&Command::StartAttempt {
                job,
                generation,
                placement: p,
                now: 1,
            })
            .unwrap_err()
        };
    // Over-commit: a is full.
    assert!(matches!(
        try_start(&mut s, k, 1, vec![a, b]),
        ApplyError::BadPlacement { .. }
    ));
    // Too few ranks.
    assert!(matches!(
        try_start(&mut s, k, 1, vec![b]),
        ApplyError::BadPlacement { .. }
    ));
    assert_eq!(
        try_start(&mut s, k, 3, vec![b, b]),
        ApplyError::WrongGeneration {
            job: k,
            got: 3,
            expected: 1
        }
    );
    assert!(matches!(
        try_start(&mut s, j, 2, vec![b, b]),
        ApplyError::JobNotQueued { .. }
    ));
    assert_eq!(
        try_start(&mut s, k, 1, vec![b, WorkerId(99)]),
        ApplyError::UnknownWorker(WorkerId(99))
    );
    assert_eq!(s, before);
    s.apply(&Command::Cordon { worker: b }).unwrap();
    s.apply(&Command::CancelJob { job: j, now: 2 }).unwrap();
    assert!(matches!(
        try_start(&mut s, k, 1, vec![a, b]),
        ApplyError::BadPlacement { .. }
    ));
}

#[test]
fn cancel_stops_a_running_job_and_a_finished_job_cannot_be_cancelled() {
    let mut s = cluster();
    let a = worker(&mut s, "a", 1);
    let b = worker(&mut s, "b", 1);
    let queued = submit(&mut s, "q", 1, 0);
    let running = submit(&mut s, "r", 2, 0);
    let g = start(&mut s, running, &[a, b], 0);
    assert_eq!(
        s.apply(&Command::CancelJob {
            job: queued,
            now: 1
        })
        .unwrap(),
        vec![Effect::JobFinished {
            job: queued,
            state: JobState::Cancelled
        }]
    );
    s.apply(&exit(running, g, 0, RankExit::Success)).unwrap();
    let effects = s
        .apply(&Command::CancelJob {
            job: running,
            now: 2,
        })
        .unwrap();
    assert_eq!(
        effects,
        vec![
            Effect::StopRanks {
                job: running,
                generation: g,
                workers: vec![b]
            },
            Effect::JobFinished {
                job: running,
                state: JobState::Cancelled
            }
        ]
    );
    assert_eq!(
        s.jobs[&running].attempts[0].outcome,
        Some(AttemptOutcome::Cancelled)
    );
    let err = s
        .apply(&Command::CancelJob {
            job: running,
            now: 3,
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "job-2 has already finished (cancelled); there is nothing to cancel"
    );
}

#[test]
fn a_lost_worker_stops_the_gang_elsewhere_and_requeues_its_jobs() {
    let mut s = cluster();
    let a = worker(&mut s, "a", 1);
    let b = worker(&mut s, "b", 1);
    let c = worker(&mut s, "c", 1);
    let j = submit(&mut s, "j", 3, 0);
    let g = start(&mut s, j, &[a, b, c], 0);
    for (w, now) in [(a, 10_000), (c, 10_000)] {
        s.apply(&Command::Heartbeat { worker: w, now }).unwrap();
    }
    // b last heard at 0; the timeout is 15 s.
    assert_eq!(s.apply(&Command::Tick { now: 15_000 }).unwrap(), vec![]);
    let effects = s.apply(&Command::Tick { now: 15_001 }).unwrap();
    assert_eq!(
        effects,
        vec![
            Effect::WorkerLost { worker: b },
            Effect::StopRanks {
                job: j,
                generation: g,
                workers: vec![a, c]
            },
            Effect::JobRequeued {
                job: j,
                generation: g,
                reason: format!("{b} (b) lost: no heartbeat for 15001 ms (timeout 15000 ms)"),
            },
        ]
    );
    assert_eq!(s.jobs[&j].state, JobState::Queued);
    // Lost workers' slots are not offered: the 3-rank job cannot be placed on 2 workers.
    let plan = convoy_coordinator::schedule_at(&s, 0);
    assert!(plan.starts.is_empty());
    assert_eq!(
        plan.unschedulable[0].reason.to_string(),
        "needs 3 slots; the cluster has 2 alive uncordoned"
    );
}

#[test]
fn progress_timeout_requeues_a_stalled_job_and_progress_defers_it() {
    let mut s = cluster();
    let w = worker(&mut s, "a", 1);
    let mut sub = SubmitJob::parse(&spec("j", 1, "cpu"), "j.toml", 0).expect("a valid spec");
    sub.progress_timeout = Some(1_000);
    s.apply(&Command::SubmitJob(sub)).unwrap();
    let j = JobId(1);
    let g = start(&mut s, j, &[w], 100);
    s.apply(&Command::Heartbeat {
        worker: w,
        now: 900,
    })
    .unwrap();
    s.apply(&Command::ReportProgress {
        job: j,
        generation: g,
        step: 1,
        now: 900,
    })
    .unwrap();
    s.apply(&Command::Heartbeat {
        worker: w,
        now: 1_800,
    })
    .unwrap();
    assert_eq!(s.apply(&Command::Tick { now: 1_800 }).unwrap(), vec![]);
    let effects = s.apply(&Command::Tick { now: 1_901 }).unwrap();
    assert_eq!(
        effects,
        vec![
            Effect::StopRanks {
                job: j,
                generation: g,
                workers: vec![w]
            },
            Effect::JobRequeued {
                job: j,
                generation: g,
                reason: "no progress for 1001 ms (timeout 1000 ms)".into()
            }
        ]
    );
}

#[test]
fn repeated_failures_cordon_a_worker_until_an_operator_uncordons_it() {
    let mut s = cluster();
    let w = worker(&mut s, "flaky", 1);
    let mut sub = SubmitJob::parse(&spec("j", 1, "cpu"), "j.toml", 0).expect("a valid spec");
    sub.max_restarts = 10;
    s.apply(&Command::SubmitJob(sub)).unwrap();
    let j = JobId(1);
    // fail, fail, succeed-on-another-job resets; then three in a row cordon.
    for _ in 0..2 {
        let g = start(&mut s, j, &[w], 0);
        s.apply(&exit(j, g, 0, fail(1, ""))).unwrap();
    }
    assert_eq!(s.workers[&w].consecutive_failures, 2);
    let ok = submit(&mut s, "ok", 1, 0);
    let g = start(&mut s, ok, &[w], 0);
    s.apply(&exit(ok, g, 0, RankExit::Success)).unwrap();
    assert_eq!(s.workers[&w].consecutive_failures, 0);
    for i in 0..3 {
        let g = start(&mut s, j, &[w], 0);
        let effects = s.apply(&exit(j, g, 0, fail(1, ""))).unwrap();
        let cordoned = effects
            .iter()
            .any(|e| matches!(e, Effect::WorkerCordoned { worker, .. } if *worker == w));
        assert_eq!(cordoned, i == 2);
    }
    assert_eq!(
        s.workers[&w].cordon,
        Some(Cordon::Failures { consecutive: 3 })
    );
    assert!(!s.workers[&w].schedulable());
    // Cordon is orthogonal to liveness: lost and back, still cordoned.
    s.apply(&Command::Tick { now: 60_000 }).unwrap();
    assert_eq!(s.workers[&w].liveness, Liveness::Lost);
    s.apply(&Command::RegisterWorker {
        name: "flaky".into(),
        slots: 1,
        gpus: 0,
        instance: "test".into(),
        now: 60_001,
    })
    .unwrap();
    assert!(s.workers[&w].cordon.is_some());
    assert!(convoy_coordinator::schedule_at(&s, 0).starts.is_empty());
    s.apply(&Command::Uncordon { worker: w }).unwrap();
    assert_eq!(s.workers[&w].consecutive_failures, 0);
    assert!(s.workers[&w].schedulable());
    assert_eq!(run_scheduler(&mut s, 60_002).len(), 1);
}

/// A rank that exits with `EXIT_JOB_ERROR` (a missing data file, an invalid spec) fails its job
/// at once, with the reason, keeping the restarts it was allowed, and counts against no
/// worker: the same failure would follow the job anywhere.
#[test]
fn a_job_error_fails_the_job_once_and_blames_no_worker() {
    let mut s = cluster();
    let w = worker(&mut s, "healthy", 1);
    let mut sub = SubmitJob::parse(&spec("j", 1, "cpu"), "j.toml", 0).expect("a valid spec");
    sub.max_restarts = 10;
    s.apply(&Command::SubmitJob(sub)).unwrap();
    let j = JobId(1);
    let g = start(&mut s, j, &[w], 0);
    let status = i32::from(convoy_service::EXIT_JOB_ERROR);
    let effects = s
        .apply(&exit(
            j,
            g,
            0,
            fail(status, "error: data.csv: No such file"),
        ))
        .unwrap();
    let reason = "rank 0 on worker-1 (healthy) exited with status 4: error: data.csv: No such \
                  file (an error of the job: not retried)";
    assert!(
        effects.contains(&Effect::JobFinished {
            job: j,
            state: JobState::Failed {
                reason: reason.into()
            },
        }),
        "{effects:?}"
    );
    assert_eq!(s.jobs[&j].attempts.len(), 1);
    assert_eq!(s.workers[&w].consecutive_failures, 0);
    assert!(s.workers[&w].cordon.is_none());
}

/// When a worker dies, the rank on the healthy worker notices first (its ring breaks) and
/// exits with `EXIT_PEER_FAILED`: the attempt is retried, the messenger's worker is not
/// blamed, and the dead worker is charged when it is declared lost.
#[test]
fn a_lost_peer_is_charged_to_its_worker_not_to_the_rank_that_noticed() {
    let mut s = cluster();
    s.apply(&Command::Configure(convoy_coordinator::ClusterConfig {
        auto_cordon_after: 1,
        ..s.config.clone()
    }))
    .unwrap();
    let healthy = worker(&mut s, "healthy", 1);
    let dead = worker(&mut s, "dead", 1);
    let j = submit(&mut s, "j", 2, 0);
    let g = start(&mut s, j, &[healthy, dead], 0);
    let status = i32::from(convoy_service::EXIT_PEER_FAILED);
    let effects = s
        .apply(&exit(
            j,
            g,
            0,
            fail(
                status,
                "error: rank 1 (10.0.0.2:4000) closed the connection",
            ),
        ))
        .unwrap();
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::JobRequeued { reason, .. } if reason.contains("a peer failed; worker-1 is not blamed"))),
        "{effects:?}"
    );
    assert_eq!(s.workers[&healthy].consecutive_failures, 0);
    assert!(s.workers[&healthy].cordon.is_none());
    // The dead one stops heartbeating; the healthy one goes on.
    s.apply(&Command::Heartbeat {
        worker: healthy,
        now: 60_000,
    })
    .unwrap();
    let effects = s.apply(&Command::Tick { now: 60_000 }).unwrap();
    assert!(
        effects.contains(&Effect::WorkerLost { worker: dead }),
        "{effects:?}"
    );
    assert_eq!(s.workers[&dead].consecutive_failures, 1);
    assert!(
        s.workers[&dead].cordon.is_some(),
        "the dead worker was not charged"
    );
    assert!(s.workers[&healthy].cordon.is_none());
}
