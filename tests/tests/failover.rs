//! A replicated coordinator on real processes: three `convoy-coordinator` replicas, worker
//! daemons and the CLI given all three addresses. The leader is SIGKILLed while a job trains;
//! a new leader takes over, the workers reattach without restarting a rank, a submission made
//! during the election is acknowledged once, the job's log from before the kill is kept, and
//! the job ends bit-identical to one that ran entirely under the new leader. Also: no
//! majority, a lost disk, a frozen leader, and `convoy dev --coordinators 3`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use convoy_coordinator::checkpoints::CheckpointStore;
use convoy_coordinator::model::JobId;
use convoy_testkit::cluster::Cluster;
use convoy_testkit::specs::digits;
use convoy_testkit::{corrupt_newest_chunk, serial};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The digits job over two ranks, with a checkpoint every 100 steps (so that uploads are
/// under way when a leader is killed; the final one is what is compared).
fn spec(dir: &Path, name: &str, steps: u64) -> PathBuf {
    let path = digits(dir, name, steps, 2);
    let text = std::fs::read_to_string(&path).expect("spec");
    std::fs::write(&path, format!("{text}\n[checkpoint]\ninterval = 100\n")).expect("spec");
    path
}

/// Three replicated coordinators and workers alpha and beta with `slots` slots each.
fn three_with_two_workers(heartbeat_timeout_ms: u64, slots: u32) -> Cluster {
    let mut c = Cluster::start_replicated(3, heartbeat_timeout_ms);
    for name in ["alpha", "beta"] {
        c.add_worker(name, slots);
    }
    c.wait_workers(2);
    c
}

#[test]
fn a_leader_killed_during_training_costs_no_rank_restart_and_no_acknowledged_submit() {
    let _g = serial();
    let mut c = three_with_two_workers(5_000, 2);
    let dir = c.dir.path().to_path_buf();
    // Whether the kill lands during training depends on how fast this machine trains: a job
    // that ended before its leader was killed proves nothing, so the next try is longer.
    for (round, steps) in [3_000u64, 12_000, 48_000].into_iter().enumerate() {
        let leader = c.wait_leader(Duration::from_secs(30));
        let during = c.submit(&spec(&dir, &format!("during-{round}"), steps), &[]);
        c.wait_step(&during, 0, Duration::from_secs(120));
        let killed_at = now_ms();
        c.kill_member(leader);
        // Submitted while there is no leader: the CLI retries with one request id.
        let after = c.submit(
            &spec(&dir, &format!("after-{round}"), steps),
            &["--retry-for", "60"],
        );
        let new_leader = c.wait_leader(Duration::from_secs(30));
        assert_ne!(new_leader, leader, "the killed replica cannot lead");
        let job = c.wait_state(&during, "succeeded", Duration::from_secs(600));
        let ended = job["attempts"][0]["ended_at_ms"].as_u64().unwrap_or(0);
        c.wait_state(&after, "succeeded", Duration::from_secs(600));
        c.restart_member(leader);
        if ended < killed_at {
            continue;
        }
        assert_eq!(
            job["attempts"].as_array().map(Vec::len),
            Some(1),
            "no rank was restarted across the failover: {job}"
        );
        let jobs = c.json(&["jobs"]);
        let names: Vec<&str> = jobs
            .as_array()
            .expect("a list")
            .iter()
            .filter_map(|j| j["name"].as_str())
            .collect();
        for name in [format!("during-{round}"), format!("after-{round}")] {
            assert_eq!(
                names.iter().filter(|n| **n == name).count(),
                1,
                "{name} is listed once: {names:?}"
            );
        }
        // Its log, written while the killed replica led, is kept by the new leader too.
        let logs = String::from_utf8_lossy(&c.convoy(&["logs", &during]).stdout).into_owned();
        assert!(logs.contains("attempt 1 started"), "{logs}");
        assert!(logs.contains("[rank 0] done"), "{logs}");
        let a = c.export(&during, &dir.join("during.safetensors"));
        let b = c.export(&after, &dir.join("after.safetensors"));
        assert!(
            a == b,
            "the job that lived through the failover ends with other parameters than one that \
             did not"
        );
        // Its final checkpoint is held by a majority: committed in at least two replicas'
        // stores, read once they have stopped.
        let job_id = JobId(during.trim_start_matches("job-").parse().expect("a job id"));
        let mut holders = vec![];
        for node in 1..=3 {
            assert!(c.stop_member(node), "replica {node} stops on SIGTERM");
            let store = CheckpointStore::open_dir(&c.member_dir(node).join("checkpoints"))
                .expect("a checkpoint store");
            if store.get(job_id, steps).expect("readable").is_some() {
                holders.push(node);
            }
        }
        assert!(
            holders.len() >= 2,
            "the final checkpoint is held by {holders:?} only"
        );
        return;
    }
    panic!("every job finished before its leader was killed");
}

#[test]
fn without_a_majority_writes_fail_with_one_line_and_nothing_acknowledged_is_lost() {
    let _g = serial();
    let mut c = Cluster::start_replicated(3, 5_000);
    let dir = c.dir.path().to_path_buf();
    let before = c.submit(&spec(&dir, "before", 50), &[]);
    let leader = c.wait_leader(Duration::from_secs(30));
    let others: Vec<u64> = (1..=3).filter(|n| *n != leader).collect();
    for n in &others {
        c.kill_member(*n);
    }
    // The leader steps down once it cannot hear a majority; the write is refused, not lost
    // in a hang.
    let spec_path = spec(&dir, "during", 50);
    let out = c.convoy(&[
        "submit",
        spec_path.to_str().expect("utf-8"),
        "--retry-for",
        "0",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a write without a majority: {stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no leader"), "{stderr}");
    for n in others {
        c.restart_member(n);
    }
    c.wait_leader(Duration::from_secs(30));
    let job = c.job(&before);
    assert_eq!(job["name"], "before", "{job}");
}

#[test]
fn convoy_dev_runs_a_job_on_three_replicated_coordinators() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let spec_path = spec(dir.path(), "dev", 50);
    let out = std::process::Command::new(convoy_testkit::bin_dir().join("convoy"))
        .args([
            "dev",
            spec_path.to_str().expect("utf-8"),
            "--coordinators",
            "3",
            "--workers",
            "2",
            "--world-size",
            "2",
        ])
        .output()
        .expect("run convoy dev");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("job-1 succeeded (1 attempt)"), "{stderr}");
}

/// Waits until replica `node` has applied at least `index`.
fn wait_applied(c: &Cluster, node: u64, index: u64) {
    c.wait_for(
        &format!("replica {node} to apply {index}"),
        Duration::from_secs(60),
        || {
            c.members()
                .get(&node)
                .and_then(|m| m["applied"].as_u64())
                .is_some_and(|a| a >= index)
        },
    );
}

#[test]
fn a_follower_whose_disk_is_lost_is_rebuilt_from_its_peers() {
    let _g = serial();
    let mut c = Cluster::start_replicated(3, 5_000);
    let dir = c.dir.path().to_path_buf();
    let jobs: Vec<String> = (0..3)
        .map(|i| c.submit(&spec(&dir, &format!("kept-{i}"), 50), &[]))
        .collect();
    let leader = c.wait_leader(Duration::from_secs(30));
    let commit = c.members()[&leader]["commit"].as_u64().expect("commit");
    let follower = (1..=3).find(|n| *n != leader).expect("a follower");
    c.kill_member(follower);
    std::fs::remove_dir_all(c.member_dir(follower)).expect("wipe the replica's disk");
    c.restart_member(follower);
    wait_applied(&c, follower, commit);
    // The rebuilt replica and the other follower now make the majority.
    c.kill_member(leader);
    let new_leader = c.wait_leader(Duration::from_secs(30));
    assert_ne!(new_leader, leader);
    for id in &jobs {
        assert!(
            c.job(id)["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("kept-"))
        );
    }
}

#[test]
fn a_frozen_leader_is_replaced_and_rejoins_as_a_follower_when_it_thaws() {
    let _g = serial();
    let c = Cluster::start_replicated(3, 5_000);
    let dir = c.dir.path().to_path_buf();
    let before = c.submit(&spec(&dir, "before", 50), &[]);
    let frozen = c.wait_leader(Duration::from_secs(30));
    // SIGSTOP: from the leader's point of view, a partition; its sockets stay open.
    c.signal_member(frozen, "STOP");
    let during = c.submit(&spec(&dir, "during", 50), &["--retry-for", "60"]);
    let leader = c.wait_leader(Duration::from_secs(30));
    assert_ne!(leader, frozen);
    c.signal_member(frozen, "CONT");
    let commit = c.members()[&leader]["commit"].as_u64().expect("commit");
    wait_applied(&c, frozen, commit);
    let thawed = &c.members()[&frozen];
    assert_ne!(thawed["role"], "leader", "{thawed}");
    for id in [&before, &during] {
        assert_eq!(c.job(id)["state"], "queued", "{id}");
    }
}

#[test]
fn a_leader_that_missed_a_checkpoint_fetches_it_from_the_replicas_that_hold_it() {
    let _g = serial();
    let mut c = three_with_two_workers(5_000, 1);
    let dir = c.dir.path().to_path_buf();
    let leader = c.wait_leader(Duration::from_secs(30));
    let absent = (1..=3).find(|n| *n != leader).expect("a follower");
    c.kill_member(absent);
    // Acknowledged by the leader and the other follower: a majority without `absent`.
    let job = c.submit(&spec(&dir, "missed", 300), &[]);
    c.wait_state(&job, "succeeded", Duration::from_secs(300));
    let before = c.export(&job, &dir.join("before.safetensors"));
    c.restart_member(absent);
    let commit = c.members()[&leader]["commit"].as_u64().expect("commit");
    wait_applied(&c, absent, commit);
    let out = c.convoy(&["coordinators", "--transfer-to", &absent.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        c.leader(),
        Some(absent),
        "the transfer made {absent} leader"
    );
    c.wait_for(
        "the new leader to fetch the checkpoints it missed",
        Duration::from_secs(60),
        || {
            c.json(&["checkpoints", &job])
                .as_array()
                .is_some_and(|l| l.iter().any(|m| m["step"] == 300))
        },
    );
    let after = c.export(&job, &dir.join("after.safetensors"));
    assert!(before == after, "the fetched checkpoint differs");
    // Deleting the job removes its checkpoints from every replica, not only the leader.
    let out = c.convoy(&["job", "delete", &job]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let commit = c.members()[&absent]["commit"].as_u64().expect("commit");
    for node in 1..=3 {
        wait_applied(&c, node, commit);
    }
    let job_id = JobId(job.trim_start_matches("job-").parse().expect("a job id"));
    for node in 1..=3 {
        assert!(c.stop_member(node), "replica {node} stops on SIGTERM");
        let store = CheckpointStore::open_dir(&c.member_dir(node).join("checkpoints"))
            .expect("a checkpoint store");
        let left = store.list(job_id).expect("readable");
        assert!(
            left.is_empty(),
            "replica {node} kept {} checkpoint(s)",
            left.len()
        );
    }
}

#[test]
fn checkpoints_stay_whole_as_copies_are_damaged_and_members_change() {
    let _g = serial();
    let mut c = three_with_two_workers(5_000, 1);
    let dir = c.dir.path().to_path_buf();
    // Five checkpoints, of which retention (the newest 3) lets two go, on every replica.
    let job = c.submit(&spec(&dir, "whole", 500), &[]);
    c.wait_state(&job, "succeeded", Duration::from_secs(300));
    let before = c.export(&job, &dir.join("before.safetensors"));

    // The leader's copy of the newest checkpoint is damaged on disk: an export (what a
    // resume reads too) gets a good copy from a replica rather than an older checkpoint.
    let leader = c.wait_leader(Duration::from_secs(30));
    corrupt_newest_chunk(&c.member_dir(leader).join("checkpoints"));
    let repaired = c.export(&job, &dir.join("repaired.safetensors"));
    assert!(before == repaired, "the export after the damage differs");

    // A fourth coordinator joins with an empty disk: it becomes a voter once it has caught
    // up, and fetches every committed checkpoint from the others.
    let held = c.members()[&leader]["checkpoints"]
        .as_u64()
        .expect("a checkpoint count");
    assert!(held >= 1, "the leader holds no checkpoint");
    let added = c.add_member();
    c.wait_for(
        &format!("coordinator {added} to vote and hold the {held} checkpoints"),
        Duration::from_secs(120),
        || {
            c.members()
                .get(&added)
                .is_some_and(|m| m["role"] != "learner" && m["checkpoints"].as_u64() == Some(held))
        },
    );

    // A founding follower is removed: it stops by itself, and refuses to start again.
    let leader = c.wait_leader(Duration::from_secs(30));
    let removed = (1..=3).find(|n| *n != leader).expect("a follower");
    let out = c.convoy(&["coordinators", "--remove", &removed.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = c
        .wait_member_exit(removed, Duration::from_secs(60))
        .expect("the removed coordinator stops");
    assert!(!status.success(), "{status}");
    let again = c.run_member_once(removed);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "{err}");
    assert!(err.contains("was removed from the cluster"), "{err}");

    // Three voters again, the new one among them: losing the leader is survived, and the
    // new leader serves the same checkpoint.
    c.kill_member(leader);
    let new_leader = c.wait_leader(Duration::from_secs(30));
    assert_ne!(new_leader, leader);
    let after = c.export(&job, &dir.join("after.safetensors"));
    assert!(before == after, "the checkpoint differs after the changes");

    // Every replica, the one that joined after retention ran included, holds exactly the
    // checkpoints retention kept. Not the removed one: a follower may lack a checkpoint a
    // majority stored until its repair fetches it, and a removed member never catches up (its
    // disk was seen holding steps 100, 200 and 500 when it was removed before its repair).
    let commit = c.members()[&new_leader]["commit"].as_u64().expect("commit");
    let live: Vec<u64> = (1..=added)
        .filter(|n| *n != leader && *n != removed)
        .collect();
    for node in &live {
        wait_applied(&c, *node, commit);
    }
    let job_id = JobId(job.trim_start_matches("job-").parse().expect("a job id"));
    for node in (1..=added).filter(|n| *n != removed) {
        if live.contains(&node) {
            assert!(c.stop_member(node), "replica {node} stops on SIGTERM");
        }
        let store = CheckpointStore::open_dir(&c.member_dir(node).join("checkpoints"))
            .expect("a checkpoint store");
        let steps: Vec<u64> = store
            .list(job_id)
            .expect("readable")
            .iter()
            .map(|m| m.step)
            .collect();
        assert_eq!(steps, [300, 400, 500], "replica {node}");
    }
}

/// A gang caught in its rendezvous by a failover: one of its two workers is frozen before it
/// can launch its rank, so rank 0 waits at the rendezvous (its log says so) when the leader
/// is killed. Rank 0 publishes again to the new leader; the worker thaws, reattaches, its
/// rank publishes there too, and the job ends in its first attempt.
#[test]
fn a_gang_caught_in_its_rendezvous_by_a_failover_completes_without_a_restart() {
    let _g = serial();
    // A heartbeat timeout the frozen worker stays within.
    let mut c = three_with_two_workers(60_000, 1);
    let dir = c.dir.path().to_path_buf();
    c.signal_worker("beta", "STOP");
    let job = c.submit(&spec(&dir, "gang", 200), &[]);
    c.wait_for(
        "rank 0 to wait at the rendezvous",
        Duration::from_secs(60),
        || {
            let logs = c.convoy(&["logs", &job]);
            String::from_utf8_lossy(&logs.stdout).contains("rank 0 at the rendezvous")
        },
    );
    let leader = c.wait_leader(Duration::from_secs(30));
    c.kill_member(leader);
    let new_leader = c.wait_leader(Duration::from_secs(30));
    assert_ne!(new_leader, leader);
    c.signal_worker("beta", "CONT");
    let done = c.wait_state(&job, "succeeded", Duration::from_secs(300));
    let attempts = done["attempts"].as_array().map_or(0, Vec::len);
    assert_eq!(attempts, 1, "the gang restarted: {done}");
}
