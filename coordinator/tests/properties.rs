//! Invariants after every apply over a few hundred seeded random command sequences, and
//! determinism of the state machine.

mod common;

use std::collections::BTreeMap;

use common::cluster;
use common::random::Gen;
use convoy_coordinator::{ClusterState, JobId, JobState};

fn check_invariants(s: &ClusterState, finals: &mut BTreeMap<JobId, JobState>) {
    // No worker over-committed (slots, and GPUs for CUDA ranks).
    for (wid, used) in s.usage() {
        let w = &s.workers[&wid];
        assert!(
            used.slots <= w.slots,
            "{wid} over-committed: {used:?} of {w:?}"
        );
        assert!(used.gpus <= w.gpus, "{wid} GPUs over-committed");
        // Ranks are only live on alive workers (a lost worker's gangs were stopped).
        assert_eq!(w.liveness, convoy_coordinator::Liveness::Alive);
    }
    for job in s.jobs.values() {
        let live = job.live_attempt();
        match job.state {
            JobState::Running => {
                let a = live.expect("a running job has a live attempt");
                assert_eq!(a.placement.len(), job.world_size);
            }
            _ => assert!(
                live.is_none(),
                "{} is {} with a live attempt",
                job.id,
                job.state
            ),
        }
        for (i, a) in job.attempts.iter().enumerate() {
            assert_eq!(a.generation, i as u64 + 1, "generations of {}", job.id);
        }
        if let Some(prev) = finals.get(&job.id) {
            assert_eq!(&job.state, prev, "a final state changed");
        }
        if job.state.is_final() {
            finals.insert(job.id, job.state.clone());
        }
    }
}

#[test]
fn invariants_hold_after_every_apply() {
    let mut applied = 0;
    for seed in 0..300 {
        let mut s = cluster();
        let mut g = Gen::new(seed);
        let mut finals = BTreeMap::new();
        for _ in 0..80 {
            let cmd = g.next(&s);
            let before = s.clone();
            match s.apply(&cmd) {
                Ok(_) => applied += 1,
                Err(e) => assert_eq!(
                    s, before,
                    "seed {seed}: rejected {cmd:?} ({e}) changed state"
                ),
            }
            check_invariants(&s, &mut finals);
        }
    }
    // The generator must exercise real transitions, not only rejections.
    assert!(applied > 300 * 80 / 3, "only {applied} commands applied");
}

#[test]
fn the_same_commands_give_the_same_state_and_effects() {
    for seed in 0..20 {
        let mut a = cluster();
        let mut g = Gen::new(seed);
        let mut cmds = vec![];
        let mut effects = vec![];
        for _ in 0..100 {
            let cmd = g.next(&a);
            effects.push(a.apply(&cmd));
            cmds.push(cmd);
        }
        let mut b = cluster();
        let replay: Vec<_> = cmds.iter().map(|c| b.apply(c)).collect();
        assert_eq!(a, b);
        assert_eq!(effects, replay);
    }
}
