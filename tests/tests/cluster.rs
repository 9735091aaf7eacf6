//! The cluster end to end: real `convoy-coordinator` and `convoy-worker` processes on
//! 127.0.0.1 (ephemeral ports), driven with the `convoy` CLI. Every wait is bounded.

use std::time::{Duration, Instant};

use convoy_testkit::cluster::Cluster;
use convoy_testkit::serial;
use convoy_testkit::specs::{digits as digits_spec, with_data};
use serde_json::Value;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn attempts(job: &Value) -> usize {
    job["attempts"].as_array().map_or(0, Vec::len)
}

#[test]
fn a_two_worker_job_runs_to_completion_with_logs_from_both_ranks() {
    let _g = serial();
    let mut c = Cluster::start(5_000);
    c.add_worker("alpha", 1);
    c.add_worker("beta", 1);
    c.wait_workers(2);
    let spec = digits_spec(c.dir.path(), "digits", 300, 2);
    let out = c.convoy(&["submit", spec.to_str().unwrap(), "--follow"]);
    assert!(
        out.status.success(),
        "submit --follow failed: {}",
        stderr(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[rank 0] done: 300 steps"), "{stdout}");

    let job = c.job("job-1");
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["step"], 300);
    assert_eq!(attempts(&job), 1);
    let placement = job["attempts"][0]["placement"].as_array().unwrap().clone();
    assert_eq!(placement.len(), 2);
    assert_ne!(placement[0], placement[1], "one rank per 1-slot worker");

    let logs = c.convoy(&["logs", "job-1"]);
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(text.contains("[rank 0] rank 0/2"), "{text}");
    assert!(text.contains("[rank 1] rank 1/2"), "{text}");
    assert!(text.contains("[convoy] job succeeded"), "{text}");
    let only1 = c.convoy(&["logs", "job-1", "--rank", "1"]);
    assert!(!String::from_utf8_lossy(&only1.stdout).contains("[rank 0]"));
    // Metrics were kept per step.
    let jobs = c.json(&["jobs"]);
    assert_eq!(jobs[0]["state"], "succeeded");
    assert!(jobs[0]["loss"].as_f64().is_some());
}

/// Two one-slot workers and a 2-rank job of 4,000 steps that has stepped past step 20.
fn training_on_two_workers(heartbeat_timeout_ms: u64) -> (Cluster, String) {
    let mut c = Cluster::start(heartbeat_timeout_ms);
    c.add_worker("alpha", 1);
    c.add_worker("beta", 1);
    c.wait_workers(2);
    let spec = digits_spec(c.dir.path(), "long", 4_000, 2);
    let id = c.submit(&spec, &[]);
    c.wait_step(&id, 20, Duration::from_secs(60));
    (c, id)
}

#[test]
fn a_job_survives_a_sigkilled_coordinator_and_its_ranks_are_not_restarted() {
    let _g = serial();
    let (mut c, id) = training_on_two_workers(5_000);
    c.kill_coordinator();
    std::thread::sleep(Duration::from_millis(1500));
    c.restart_coordinator();
    let job = c.wait_state(&id, "succeeded", Duration::from_secs(180));
    assert_eq!(
        attempts(&job),
        1,
        "the ranks kept running and were reattached: {job}"
    );
    assert_eq!(job["step"], 4_000);
    assert_eq!(c.status()["workers_alive"], 2);
}

/// A graceful stop (what `systemctl restart` sends) while a job trains: the coordinator stops
/// judging liveness, ends the workers' streams and exits; after the restart the job's ranks are
/// reattached, not restarted. The heartbeat timeout is short on purpose: a shutdown that kept
/// ticking while workers could not reach it would declare them lost.
#[test]
fn a_sigtermed_coordinator_exits_cleanly_and_costs_no_attempt() {
    let _g = serial();
    let (mut c, id) = training_on_two_workers(2_000);
    assert!(
        c.stop_coordinator(),
        "the coordinator did not exit within 30 s of SIGTERM"
    );
    c.restart_coordinator();
    let job = c.wait_state(&id, "succeeded", Duration::from_secs(180));
    assert_eq!(
        attempts(&job),
        1,
        "a graceful restart cost an attempt: {job}"
    );
    assert_eq!(job["step"], 4_000);
    let log = std::fs::read_to_string(c.dir.path().join("coordinator.log")).unwrap_or_default();
    assert!(!log.contains("lost (no heartbeat)"), "{log}");
    // A finished job shows its final step and loss after another restart.
    let loss = job["loss"].as_f64().expect("a loss");
    assert!(c.stop_coordinator());
    c.restart_coordinator();
    let again = c.job(&id);
    assert_eq!(
        (again["state"].as_str(), again["step"].as_u64()),
        (Some("succeeded"), Some(4_000)),
        "{again}"
    );
    assert_eq!(again["loss"].as_f64(), Some(loss), "{again}");
}

/// The dead worker is charged for the failure, not the healthy peer whose rank noticed it
/// first: with one failure enough to cordon a worker, only the dead one ends up cordoned.
#[test]
fn a_sigkilled_worker_is_lost_and_the_job_restarts_on_the_remaining_capacity() {
    let _g = serial();
    let mut c = Cluster::start_with(2_000, &["--auto-cordon-after", "1"]);
    for name in ["alpha", "beta", "gamma"] {
        c.add_worker(name, 1);
    }
    c.wait_workers(3);
    let spec = digits_spec(c.dir.path(), "restarted", 3_000, 2);
    let id = c.submit(&spec, &[]);
    let job = c.wait_step(&id, 10, Duration::from_secs(60));
    let victim_id = job["attempts"][0]["placement"][1]
        .as_str()
        .unwrap()
        .to_string();
    let workers = c.json(&["workers"]);
    let victim = workers
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == victim_id.as_str())
        .map(|w| w["name"].as_str().unwrap().to_string())
        .unwrap();
    let killed_at = Instant::now();
    c.kill_worker(&victim);
    c.wait_for("a second attempt", Duration::from_secs(30), || {
        let j = c.job(&id);
        attempts(&j) >= 2 && j["state"] == "running"
    });
    let restarted_after = killed_at.elapsed();
    let job = c.wait_state(&id, "succeeded", Duration::from_secs(180));
    let second = &job["attempts"][1]["placement"];
    assert!(
        !second
            .as_array()
            .unwrap()
            .contains(&Value::from(victim_id.clone())),
        "the new attempt avoids the dead worker: {job}"
    );
    assert!(
        job["attempts"][0]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("failed"),
        "{job}"
    );
    c.wait_for("the victim reported lost", Duration::from_secs(10), || {
        c.json(&["workers"])
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == victim_id.as_str() && w["liveness"] == "lost")
    });
    let survivor_id = job["attempts"][0]["placement"][0].as_str().unwrap();
    for w in c.json(&["workers"]).as_array().unwrap() {
        let charged = w["id"] == victim_id.as_str();
        assert_eq!(
            w["cordoned"], charged,
            "only the dead worker is charged (the survivor was {survivor_id}): {w}"
        );
    }
    eprintln!("restart after worker SIGKILL: {restarted_after:?}");
}

#[test]
fn cancel_stops_the_ranks_and_a_finished_job_cannot_be_cancelled_again() {
    let _g = serial();
    let mut c = Cluster::start(5_000);
    c.add_worker("alpha", 2);
    c.wait_workers(1);
    let spec = digits_spec(c.dir.path(), "endless", 1_000_000, 2);
    let id = c.submit(&spec, &[]);
    c.wait_step(&id, 5, Duration::from_secs(60));
    let out = c.convoy(&["cancel", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(c.job(&id)["state"], "cancelled");
    c.wait_for("the ranks to stop", Duration::from_secs(15), || {
        c.json(&["workers"])[0]["ranks"]
            .as_array()
            .is_some_and(Vec::is_empty)
            && c.status()["slots_free"] == 2
    });
    let again = c.convoy(&["cancel", &id]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already finished"),
        "{}",
        stderr(&again)
    );
    let logs = String::from_utf8_lossy(&c.convoy(&["logs", &id]).stdout).into_owned();
    assert!(logs.contains("[convoy] job cancelled"), "{logs}");
}

#[test]
fn competing_jobs_run_in_priority_order_without_deadlock() {
    let _g = serial();
    let mut c = Cluster::start(5_000);
    c.add_worker("alpha", 1);
    c.add_worker("beta", 1);
    c.wait_workers(2);
    let dir = c.dir.path();
    // The blocker holds both slots until the test cancels it: a million steps take hours, so
    // it cannot finish before the competitors are queued behind it, however fast the machine.
    let blocker = c.submit(&digits_spec(dir, "blocker", 1_000_000, 2), &[]);
    c.wait_step(&blocker, 1, Duration::from_secs(60));
    // Both need the whole cluster; the later one has the higher priority.
    let low = c.submit(&digits_spec(dir, "low", 200, 2), &["--priority", "0"]);
    let high = c.submit(&digits_spec(dir, "high", 200, 2), &["--priority", "10"]);
    for id in [&low, &high] {
        let job = c.job(id);
        assert_eq!(job["state"], "queued", "{id}: {job}");
    }
    let out = c.convoy(&["cancel", &blocker]);
    assert!(out.status.success(), "cancel: {}", stderr(&out));
    for id in [&high, &low] {
        c.wait_state(id, "succeeded", Duration::from_secs(120));
    }
    let started = |id: &str| c.job(id)["attempts"][0]["started_at_ms"].as_u64().unwrap();
    let finished = |id: &str| c.job(id)["attempts"][0]["ended_at_ms"].as_u64().unwrap();
    assert!(started(&high) <= started(&low), "priority 10 starts first");
    assert!(
        finished(&high) <= started(&low),
        "one gang at a time on two slots"
    );
}

#[test]
fn bad_input_gets_one_line_errors_and_the_coordinator_keeps_its_data() {
    let _g = serial();
    let c = Cluster::start(5_000);
    let bad = c.dir.path().join("bad.toml");
    let good = digits_spec(c.dir.path(), "ok", 100, 1);
    let text = std::fs::read_to_string(&good)
        .unwrap()
        .replace("batch_size = 32", "batch_size = 0");
    std::fs::write(&bad, text).unwrap();
    let out = c.convoy(&["submit", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("batch_size"), "{err}");

    // A data file the coordinator can see is missing: refused at submit, not at run time.
    let missing = c.dir.path().join("missing.csv");
    with_data(&good, &bad, &format!("{:?}", missing.display().to_string()));
    let out = c.convoy(&["submit", bad.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("missing.csv does not exist"), "{err}");

    let id = c.submit(&good, &[]);
    for (args, want) in [
        (vec!["job", "show", "job-99"], "unknown job job-99"),
        (vec!["job", "show", "nonsense"], "is not a job id"),
        (vec!["cordon", "no-such-worker"], "no worker named"),
        (vec!["logs", "job-42"], "unknown job job-42"),
    ] {
        let out = c.convoy(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let e = stderr(&out);
        assert!(e.contains(want), "{args:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
    }
    let out = c.convoy(&["jobs", "--coordinator", "127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot reach the coordinator"),
        "{}",
        stderr(&out)
    );
    // The accepted job is still there, queued (no workers).
    assert_eq!(c.job(&id)["state"], "queued");
    assert!(c.job(&id)["reason"].as_str().unwrap().contains("slot"));
}

/// A job whose data file is missing fails once, with the reason, and its worker is not
/// blamed (not cordoned, no failure counted). What the job sends to operators' terminals (the
/// failure reason naming the file, its log) shows escape sequences escaped, not obeyed.
#[test]
fn a_missing_data_file_fails_the_job_once_and_its_name_is_shown_escaped() {
    let _g = serial();
    let mut c = Cluster::start(5_000);
    c.add_worker("alpha", 1);
    c.wait_workers(1);
    let spec = digits_spec(c.dir.path(), "escapes", 50, 1);
    // A data file that does not exist, named with the sequence that retitles a terminal.
    with_data(&spec, &spec, "\"/nonexistent/x\\u001b]0;owned\\u0007.csv\"");
    let id = c.submit(&spec, &[]);
    let job = c.wait_state(&id, "failed", Duration::from_secs(120));
    assert_eq!(attempts(&job), 1, "a job error was retried: {job}");
    let reason = job["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("not retried"), "{reason}");
    let workers = c.json(&["workers"]);
    let alpha = &workers.as_array().expect("workers")[0];
    assert_eq!(
        alpha["cordoned"], false,
        "the healthy worker was blamed: {alpha}"
    );
    for args in [vec!["job", "show", &id], vec!["jobs"], vec!["logs", &id]] {
        let out = c.convoy(&args);
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            !shown.contains('\u{1b}'),
            "{args:?} printed a raw escape: {shown}"
        );
        if args[0] != "jobs" {
            assert!(
                shown.contains("x\\u{1b}]0;owned\\u{7}.csv"),
                "{args:?}: {shown}"
            );
        }
    }
}
