//! The gang scheduler: gangs, priorities, FIFO, backfill, unschedulable jobs, placement.

mod common;

use common::*;
use convoy_coordinator::{
    ApplyError, ClusterConfig, ClusterState, Command, Decision, Effect, JobId, JobState, RankExit,
    SubmitJob, WaitReason, WorkerId, schedule_at,
};

fn finish(s: &mut ClusterState, job: JobId) {
    let a = s.jobs[&job].attempts.last().expect("an attempt").clone();
    for rank in 0..a.placement.len() {
        s.apply(&Command::ReportRankExit {
            job,
            generation: a.generation,
            rank,
            exit: RankExit::Success,
            now: 50,
        })
        .expect("exit");
    }
    assert_eq!(s.jobs[&job].state, JobState::Succeeded);
}

fn started(s: &ClusterState) -> Vec<JobId> {
    schedule_at(s, 0).starts.iter().map(|d| d.job).collect()
}

#[test]
fn gangs_start_whole_or_not_at_all() {
    let mut s = cluster();
    let a = worker(&mut s, "a", 2);
    let b = worker(&mut s, "b", 2);
    let j1 = submit(&mut s, "one", 3, 0);
    let j2 = submit(&mut s, "two", 3, 0);
    let plan = schedule_at(&s, 0);
    assert_eq!(
        plan.starts,
        vec![Decision {
            job: j1,
            generation: 1,
            placement: vec![a, a, b]
        }]
    );
    assert_eq!(plan.waiting.len(), 1);
    assert_eq!(plan.waiting[0].job, j2);
    assert_eq!(
        plan.waiting[0].reason.to_string(),
        "waiting for capacity: needs 3 slots; 1 free now"
    );
    run_scheduler(&mut s, 1);
    // Nothing half-placed: j2 holds no slot while it waits.
    assert_eq!(s.jobs[&j2].state, JobState::Queued);
    assert!(s.jobs[&j2].attempts.is_empty());
    assert_eq!(s.usage().values().map(|u| u.slots).sum::<u32>(), 3);
    assert!(schedule_at(&s, 0).starts.is_empty());
    finish(&mut s, j1);
    assert_eq!(started(&s), vec![j2]);
}

#[test]
fn higher_priority_first_then_fifo() {
    let mut s = cluster();
    worker(&mut s, "a", 3);
    let low = submit(&mut s, "low", 3, 0);
    let high = submit(&mut s, "high", 3, 10);
    let high2 = submit(&mut s, "high2", 3, 10);
    assert_eq!(started(&s), vec![high]);
    run_scheduler(&mut s, 1);
    finish(&mut s, high);
    assert_eq!(started(&s), vec![high2]);
    run_scheduler(&mut s, 2);
    finish(&mut s, high2);
    assert_eq!(started(&s), vec![low]);
}

#[test]
fn fifo_within_a_priority_fills_the_cluster_in_order() {
    let mut s = cluster();
    worker(&mut s, "a", 4);
    let ids: Vec<JobId> = (0..5)
        .map(|i| submit(&mut s, &format!("j{i}"), 1, 0))
        .collect();
    assert_eq!(started(&s), ids[..4].to_vec());
}

#[test]
fn backfill_uses_only_slack_that_cannot_delay_the_head() {
    // 4 slots; a 3-rank gang runs; the head needs 2 (1 free). When the gang ends 4 are free,
    // 2 more than the head needs, so a 1-rank job behind the head may start now.
    let mut s = cluster();
    worker(&mut s, "a", 4);
    let big = submit(&mut s, "big", 3, 5);
    run_scheduler(&mut s, 0);
    let head = submit(&mut s, "head", 2, 0);
    let small = submit(&mut s, "small", 1, 0);
    let plan = schedule_at(&s, 0);
    assert_eq!(
        plan.starts.iter().map(|d| d.job).collect::<Vec<_>>(),
        vec![small]
    );
    assert_eq!(plan.waiting[0].job, head);
    run_scheduler(&mut s, 1);
    // The head still starts as soon as the big gang ends, with the small job running.
    finish(&mut s, big);
    assert_eq!(started(&s), vec![head]);
}

#[test]
fn backfill_is_refused_when_it_would_delay_the_head() {
    // 4 slots; gangs of 2 and 1 run; the head needs 3 (1 free). The head can start when the
    // 2-gang ends (1 + 2 = 3, no slack): a 1-rank job in the free slot would delay it.
    let mut s = cluster();
    worker(&mut s, "a", 4);
    let two = submit(&mut s, "two", 2, 5);
    let one = submit(&mut s, "one", 1, 5);
    run_scheduler(&mut s, 0);
    let head = submit(&mut s, "head", 3, 0);
    let small = submit(&mut s, "small", 1, 0);
    let plan = schedule_at(&s, 0);
    assert!(plan.starts.is_empty());
    assert_eq!(plan.waiting[1].job, small);
    assert_eq!(
        plan.waiting[1].reason.to_string(),
        format!("would delay {head}, the first waiting job (needs 1 slots; backfill slack 0)")
    );
    finish(&mut s, two);
    assert_eq!(started(&s), vec![head]);
    let _ = one;
}

#[test]
fn an_oversized_job_is_reported_and_does_not_block_the_queue() {
    let mut s = cluster();
    worker(&mut s, "a", 2);
    worker(&mut s, "b", 1);
    let huge = submit(&mut s, "huge", 4, 100);
    let small = submit(&mut s, "small", 2, 0);
    let plan = schedule_at(&s, 0);
    assert_eq!(plan.unschedulable.len(), 1);
    assert_eq!(plan.unschedulable[0].job, huge);
    assert_eq!(
        plan.unschedulable[0].reason.to_string(),
        "needs 4 slots; the cluster has 3 alive uncordoned"
    );
    assert_eq!(
        plan.starts.iter().map(|d| d.job).collect::<Vec<_>>(),
        vec![small]
    );
    // A worker joins: the big job becomes schedulable and, as the head, waits for slots.
    run_scheduler(&mut s, 0);
    worker(&mut s, "c", 1);
    let plan = schedule_at(&s, 0);
    assert!(plan.unschedulable.is_empty());
    assert_eq!(plan.waiting[0].job, huge);
}

#[test]
fn cordoned_and_lost_workers_get_no_ranks() {
    let mut s = cluster();
    let a = worker(&mut s, "a", 2);
    let b = worker(&mut s, "b", 2);
    let c = worker(&mut s, "c", 2);
    s.apply(&Command::Cordon { worker: a }).unwrap();
    s.apply(&Command::Heartbeat {
        worker: c,
        now: 20_000,
    })
    .unwrap();
    s.apply(&Command::Tick { now: 20_000 }).unwrap(); // a and b silent since 0: lost
    s.apply(&Command::RegisterWorker {
        name: "b".into(),
        slots: 2,
        gpus: 0,
        instance: "test".into(),
        now: 20_000,
    })
    .unwrap();
    let _ = submit(&mut s, "j", 2, 0);
    let _ = submit(&mut s, "k", 2, 0);
    let plan = schedule_at(&s, 0);
    let used: Vec<WorkerId> = plan
        .starts
        .iter()
        .flat_map(|d| d.placement.clone())
        .collect();
    assert_eq!(used, vec![b, b, c, c]);
    s.apply(&Command::Cordon { worker: c }).unwrap();
    let plan = schedule_at(&s, 0);
    assert_eq!(plan.starts.len(), 1);
    assert!(plan.starts[0].placement.iter().all(|w| *w == b));
}

#[test]
fn cuda_jobs_without_gpu_workers_get_a_clear_message() {
    let mut s = cluster();
    worker(&mut s, "a", 8);
    let effects = s
        .apply(&Command::SubmitJob(
            SubmitJob::parse(&spec("gpu", 2, "cuda"), "gpu.toml", 0).expect("a valid spec"),
        ))
        .unwrap();
    let [Effect::JobSubmitted { job }] = effects.as_slice() else {
        panic!("{effects:?}")
    };
    let plan = schedule_at(&s, 0);
    assert_eq!(plan.unschedulable[0].job, *job);
    assert_eq!(
        plan.unschedulable[0].reason.to_string(),
        "backend = \"cuda\" needs GPU workers; no alive uncordoned worker reports a GPU"
    );
    // A GPU worker: one rank per GPU.
    let g = s
        .apply(&Command::RegisterWorker {
            name: "gpu-box".into(),
            slots: 8,
            gpus: 2,
            instance: "test".into(),
            now: 0,
        })
        .unwrap();
    let [Effect::WorkerRegistered { worker: gw }] = g.as_slice() else {
        panic!("{g:?}")
    };
    assert_eq!(schedule_at(&s, 0).starts[0].placement, vec![*gw, *gw]);
}

#[test]
fn placement_is_best_fit_on_one_worker_else_packed_by_most_free() {
    let mut s = cluster();
    let a = worker(&mut s, "a", 4);
    let b = worker(&mut s, "b", 2);
    let c = worker(&mut s, "c", 3);
    let two = submit(&mut s, "two", 2, 0);
    let six = submit(&mut s, "six", 6, 0);
    let plan = schedule_at(&s, 0);
    assert_eq!(plan.starts[0].job, two);
    assert_eq!(plan.starts[0].placement, vec![b, b]);
    assert_eq!(plan.starts[1].job, six);
    assert_eq!(plan.starts[1].placement, vec![a, a, a, a, c, c]);
    // Deterministic: the same state gives the same plan.
    assert_eq!(schedule_at(&s, 0), plan);
}

#[test]
fn a_job_requeued_after_a_rank_failure_is_held_for_the_restart_delay() {
    let mut s = ClusterState::new(ClusterConfig {
        restart_delay: 5_000,
        ..ClusterConfig::default()
    });
    let a = worker(&mut s, "a", 1);
    let b = worker(&mut s, "b", 1);
    let job = submit(&mut s, "j", 2, 0);
    let plan = schedule_at(&s, 0);
    s.apply(&plan.starts[0].clone().into_command(0)).unwrap();
    s.apply(&Command::ReportRankExit {
        job,
        generation: 1,
        rank: 0,
        exit: RankExit::Failure {
            status: 1,
            log_tail: "peer closed the connection".into(),
        },
        now: 1_000,
    })
    .unwrap();
    // Held: nothing starts before 6 000 ms, and a start command is refused too.
    let early = schedule_at(&s, 5_999);
    assert!(early.starts.is_empty());
    assert_eq!(early.waiting[0].reason, WaitReason::Held { remaining: 1 });
    assert!(
        early.waiting[0]
            .reason
            .to_string()
            .starts_with("restarting in 1 ms")
    );
    let premature = Command::StartAttempt {
        job,
        generation: 2,
        placement: vec![a, b],
        now: 5_999,
    };
    assert!(matches!(s.apply(&premature), Err(ApplyError::Held { .. })));
    // Both workers are alive and heartbeating.
    for w in [a, b] {
        s.apply(&Command::Heartbeat {
            worker: w,
            now: 5_500,
        })
        .unwrap();
    }
    let later = schedule_at(&s, 6_000);
    assert_eq!(later.starts.len(), 1);
    assert_eq!(later.starts[0].generation, 2);
}

/// A worker SIGKILLed with its ranks: its peer's rank fails at once, the hold ends after the
/// heartbeat timeout, and the tick that declares the worker lost may come a little later on a
/// loaded coordinator. The restart must not land on the dead worker in between: it is silent
/// (no heartbeat for over half the timeout), so the gang goes to the live workers.
#[test]
fn a_restart_avoids_a_worker_that_is_silent_but_not_yet_lost() {
    let mut s = ClusterState::new(ClusterConfig {
        heartbeat_timeout: 2_000,
        restart_delay: 2_000,
        ..ClusterConfig::default()
    });
    let a = worker(&mut s, "a", 1);
    let dead = worker(&mut s, "dead", 1);
    let job = submit(&mut s, "j", 2, 0);
    let plan = schedule_at(&s, 0);
    s.apply(&plan.starts[0].clone().into_command(0)).unwrap();
    let c = worker(&mut s, "c", 1);
    // `dead` heartbeats last at 900 and is killed at 1 000; its peer fails at 1 010.
    for (w, now) in [(a, 900), (dead, 900), (c, 900)] {
        s.apply(&Command::Heartbeat { worker: w, now }).unwrap();
    }
    s.apply(&Command::ReportRankExit {
        job,
        generation: 1,
        rank: 0,
        exit: RankExit::Failure {
            status: 1,
            log_tail: "peer closed the connection".into(),
        },
        now: 1_010,
    })
    .unwrap();
    for now in [1_900, 2_900] {
        for w in [a, c] {
            s.apply(&Command::Heartbeat { worker: w, now }).unwrap();
        }
    }
    // The hold is over at 3 010; the tick that would declare `dead` lost (due after 2 900)
    // has not run yet, so it is still alive in the state, but silent since 900.
    let plan = schedule_at(&s, 3_010);
    assert_eq!(plan.starts.len(), 1, "{plan:?}");
    assert_eq!(plan.starts[0].placement.len(), 2);
    assert!(!plan.starts[0].placement.contains(&dead), "{plan:?}");
}

/// Workers may register any number of slots: capacity sums saturate instead of wrapping (or
/// panicking), and the scheduler still places gangs.
#[test]
fn workers_with_u32_max_slots_do_not_overflow_the_sums() {
    let mut s = cluster();
    let a = worker(&mut s, "a", u32::MAX);
    let b = worker(&mut s, "b", u32::MAX);
    let job = submit(&mut s, "big", 3, 0);
    let plan = schedule_at(&s, 0);
    assert_eq!(plan.starts.len(), 1, "{plan:?}");
    assert_eq!(plan.starts[0].job, job);
    assert!(plan.starts[0].placement.iter().all(|w| *w == a || *w == b));
    run_scheduler(&mut s, 1);
    let used: u32 = s.usage().values().map(|u| u.slots).sum();
    assert_eq!(used, 3);
}
