//! Checkpoints end to end on real binaries: a job that loses a worker resumes from its last
//! checkpoint and ends bit-identical to an uninterrupted run; `convoy resume` and
//! `init_from = "job:ID"`; export, verify and the listing; bad references get one line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use convoy_coordinator::checkpoints::CheckpointStore;
use convoy_coordinator::model::JobId;
use convoy_testkit::cluster::Cluster;
use convoy_testkit::specs::digits as digits_spec;
use convoy_testkit::{corrupt_newest_chunk, serial};
use serde_json::Value;

/// The digits job with a checkpoint every `interval` steps and `extra` appended.
fn spec(dir: &Path, name: &str, steps: u64, interval: u64, extra: &str) -> PathBuf {
    let path = digits_spec(dir, name, steps, 2);
    let mut text = std::fs::read_to_string(&path).expect("spec");
    text = format!("{extra}\n{text}\n[checkpoint]\ninterval = {interval}\n");
    std::fs::write(&path, text).expect("write spec");
    path
}

fn steps(c: &Cluster, id: &str) -> Vec<u64> {
    c.json(&["checkpoints", id])
        .as_array()
        .expect("a list")
        .iter()
        .map(|x| x["step"].as_u64().expect("step"))
        .collect()
}

fn logs(c: &Cluster, id: &str) -> String {
    String::from_utf8_lossy(&c.convoy(&["logs", id]).stdout).into_owned()
}

#[test]
fn a_job_that_loses_a_worker_resumes_and_ends_bit_identical_to_an_uninterrupted_run() {
    let _g = serial();
    let mut c = Cluster::start(2_000);
    for name in ["alpha", "beta", "gamma"] {
        c.add_worker(name, 1);
    }
    c.wait_workers(3);
    let dir = c.dir.path().to_path_buf();
    let total = 1_500;

    let straight = c.submit(&spec(&dir, "straight", total, 100, ""), &[]);
    c.wait_state(&straight, "succeeded", Duration::from_secs(240));
    let kept = steps(&c, &straight);
    assert_eq!(
        kept.last(),
        Some(&total),
        "the final state is saved: {kept:?}"
    );
    assert!(kept.len() <= 3, "keep_last = 3 by default: {kept:?}");

    let resumed = c.submit(&spec(&dir, "resumed", total, 100, ""), &[]);
    c.wait_for("a first checkpoint", Duration::from_secs(120), || {
        !steps(&c, &resumed).is_empty()
    });
    let job = c.job(&resumed);
    assert_eq!(
        job["state"], "running",
        "still running after its first checkpoint: {job}"
    );
    let victim_id = job["attempts"][0]["placement"][1]
        .as_str()
        .expect("placement")
        .to_string();
    let victim = c
        .json(&["workers"])
        .as_array()
        .expect("workers")
        .iter()
        .find(|w| w["id"] == victim_id.as_str())
        .and_then(|w| w["name"].as_str())
        .expect("victim name")
        .to_string();
    c.kill_worker(&victim);
    let job = c.wait_state(&resumed, "succeeded", Duration::from_secs(240));
    assert_eq!(
        job["attempts"].as_array().map(Vec::len),
        Some(2),
        "one restart: {job}"
    );
    let text = logs(&c, &resumed);
    assert!(text.contains("resuming from checkpoint step"), "{text}");

    let a = c.export(
        &format!("{straight}@{total}"),
        &dir.join("straight.safetensors"),
    );
    let b = c.export(&resumed, &dir.join("resumed.safetensors"));
    assert!(
        a == b,
        "the resumed job's final parameters differ from the uninterrupted run's"
    );

    let verify = c.json(&["checkpoint", "verify", &resumed]);
    assert_eq!(verify["ok"], true, "{verify}");

    // Fine-tuning from the finished job's checkpoint.
    let tuned = c.submit(
        &spec(
            &dir,
            "tuned",
            50,
            0,
            &format!("init_from = \"job:{straight}\""),
        ),
        &[],
    );
    c.wait_state(&tuned, "succeeded", Duration::from_secs(120));
    let text = logs(&c, &tuned);
    assert!(
        text.contains(&format!(
            "initialised the parameters from {straight} step {total}"
        )),
        "{text}"
    );
}

#[test]
fn a_cancelled_job_resumes_from_its_checkpoint_and_bad_references_get_one_line() {
    let _g = serial();
    let mut c = Cluster::start(2_000);
    c.add_worker("alpha", 2);
    c.wait_workers(1);
    let dir = c.dir.path().to_path_buf();
    let id = c.submit(&spec(&dir, "paused", 3_000, 100, ""), &[]);
    c.wait_for("a first checkpoint", Duration::from_secs(120), || {
        !steps(&c, &id).is_empty()
    });
    let out = c.convoy(&["cancel", &id]);
    assert!(out.status.success());
    c.wait_state(&id, "cancelled", Duration::from_secs(30));
    let saved = steps(&c, &id);
    // A cancelled job has no final state: exporting "the job" is refused, naming what there is.
    let newest = saved.last().expect("a checkpoint");
    let o = c.convoy(&["checkpoint", "export", &id, "-o", "/dev/null"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "exported a cancelled job as if finished"
    );
    assert!(
        err.contains("ended without its final checkpoint (step 3000)")
            && err.contains(&format!("{id}@{newest}")),
        "{err}"
    );

    let resumed: Value = c.json(&["resume", &id]);
    assert!(
        resumed["state"] == "queued" || resumed["state"] == "running",
        "{resumed}"
    );
    c.wait_state(&id, "succeeded", Duration::from_secs(240));
    let text = logs(&c, &id);
    let first = saved.first().expect("a checkpoint");
    assert!(
        text.lines()
            .any(|l| l.contains("resuming from checkpoint step") && !l.contains(" step 0")),
        "{text}"
    );
    assert!(*first > 0);

    let one_line = |args: &[&str], want: &str| {
        let o = c.convoy(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    };

    // What must fail is refused at submit, with one line: fine-tuning from a model of
    // another architecture, from a step that was never saved, and a gang larger than the
    // whole cluster.
    let other = spec(
        &dir,
        "other-model",
        50,
        0,
        &format!("init_from = \"job:{id}\""),
    );
    let text = std::fs::read_to_string(&other).expect("spec");
    std::fs::write(&other, text.replace("hidden = [128, 64]", "hidden = [32]")).expect("write");
    let other = other.to_str().expect("utf-8");
    one_line(
        &["submit", other],
        "this spec builds a mlp(…, hidden=[32], …)",
    );
    let missing = spec(
        &dir,
        "missing-step",
        50,
        0,
        &format!("init_from = \"job:{id}@7\""),
    );
    one_line(
        &["submit", missing.to_str().expect("utf-8")],
        "has no checkpoint at step 7",
    );
    one_line(
        &["submit", other, "--world-size", "64"],
        "world_size = 64: the cluster's 1 worker(s) have 2 slots in all",
    );
    let out = dir.join("x.safetensors");
    let out = out.to_str().expect("utf-8");
    one_line(
        &["checkpoint", "export", &format!("{id}@7"), "-o", out],
        "no checkpoint at step 7",
    );
    one_line(
        &["checkpoint", "export", &id, "--format", "onnx", "-o", out],
        "unknown export format",
    );
    one_line(&["checkpoints", "job-999"], "unknown job");
    one_line(
        &["resume", &id],
        "only a failed or cancelled job can be resumed",
    );
    one_line(
        &["checkpoint", "verify", &format!("{id}@x")],
        "numeric step",
    );
}

#[test]
fn a_corrupted_checkpoint_is_reported_and_the_previous_one_is_used() {
    let _g = serial();
    let mut c = Cluster::start(2_000);
    c.add_worker("alpha", 2);
    c.wait_workers(1);
    let dir = c.dir.path().to_path_buf();
    let id = c.submit(&spec(&dir, "damaged", 3_000, 100, ""), &[]);
    c.wait_for("two checkpoints", Duration::from_secs(120), || {
        steps(&c, &id).len() >= 2
    });
    assert!(c.convoy(&["cancel", &id]).status.success());
    c.wait_state(&id, "cancelled", Duration::from_secs(30));
    let saved = steps(&c, &id);
    let (newest, previous) = (saved[saved.len() - 1], saved[saved.len() - 2]);

    c.kill_coordinator();
    corrupt_newest_chunk(&c.dir.path().join("coordinator/checkpoints"));
    c.restart_coordinator();
    c.wait_workers(1);

    let o = c.convoy(&["checkpoint", "verify", &format!("{id}@{newest}")]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "verify must fail on a damaged chunk");
    assert!(err.contains("checksum") || err.contains("corrupt"), "{err}");
    // The listing says so from now on; the others are listed as they were.
    let listed = c.json(&["checkpoints", &id]);
    let listed = listed.as_array().expect("a list");
    assert_eq!(listed.len(), saved.len(), "a damaged checkpoint hid others");
    for m in listed {
        let damaged = m["damage"].as_str().is_some_and(|d| d.contains("checksum"));
        assert_eq!(damaged, m["step"].as_u64() == Some(newest), "{m}");
    }
    let o = c.convoy(&["checkpoint", "verify", &format!("{id}@{previous}")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    c.json(&["resume", &id]);
    c.wait_state(&id, "succeeded", Duration::from_secs(240));
    let text = logs(&c, &id);
    assert!(text.contains("using an older checkpoint"), "{text}");
    assert!(
        text.contains(&format!("resuming from checkpoint step {previous} ")),
        "{text}"
    );
}

/// A rank program that runs `convoy-rank` with its stderr also appended to `log` (the test
/// sees what ranks say while the coordinator, which normally receives their output, is down)
/// and its pid appended to `pids` (the test can freeze it).
fn teeing_rank_program(dir: &Path, log: &Path, pids: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("rank-tee.sh");
    let rank = convoy_testkit::bin_dir().join("convoy-rank");
    let script = format!(
        "#!/bin/bash\necho $$ >> {}\nexec {} \"$@\" 2> >(tee -a {} >&2)\n",
        pids.display(),
        rank.display(),
        log.display()
    );
    std::fs::write(&path, script).expect("write the wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Sends `signal` (STOP, CONT) to every pid; true if each was still there to receive it.
fn signal_all(pids: &[String], signal: &str) -> bool {
    pids.iter().all(|pid| {
        std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid)
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The coordinator is away when a job ends: its ranks keep retrying the final checkpoint's
/// upload instead of exiting without it; once the coordinator is back the checkpoint lands,
/// the job succeeds on its first attempt, and its export is byte for byte that of an
/// uninterrupted run of the same spec. The ranks are frozen (SIGSTOP) while the coordinator
/// is killed, once the job is known to be unfinished, so the outage spans the job's end
/// whatever the machine's speed.
#[test]
fn a_job_ending_while_the_coordinator_is_away_waits_and_stores_its_final_checkpoint() {
    let _g = serial();
    let mut c = Cluster::start(5_000);
    let dir = c.dir.path().to_path_buf();
    let tee = dir.join("ranks-stderr.log");
    let pids_file = dir.join("rank-pids");
    let program = teeing_rank_program(&dir, &tee, &pids_file);
    c.add_worker_with(
        "alpha",
        2,
        &[
            "--rank-program".into(),
            program.display().to_string(),
            "--upload-retry-ms".into(),
            "600000".into(),
        ],
    );
    c.wait_workers(1);
    // A job that finished before its ranks could be frozen proves nothing: try a longer one.
    let mut outage = None;
    for total in [5_000u64, 50_000, 500_000] {
        std::fs::write(&pids_file, "").expect("clear the pids");
        let spec = spec(&dir, &format!("final-{total}"), total, total / 5, "");
        let id = c.submit(&spec, &[]);
        c.wait_step(&id, 1, Duration::from_secs(120));
        let mut pids = vec![];
        c.wait_for("both ranks' pids", Duration::from_secs(60), || {
            pids = std::fs::read_to_string(&pids_file)
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect();
            pids.len() >= 2
        });
        let frozen = signal_all(&pids, "STOP");
        if frozen && !steps(&c, &id).contains(&total) {
            c.kill_coordinator();
            assert!(signal_all(&pids, "CONT"), "the frozen ranks are gone");
            outage = Some((id, spec, total));
            break;
        }
        signal_all(&pids, "CONT");
        c.wait_state(&id, "succeeded", Duration::from_secs(600));
    }
    let (id, spec, total) = outage.expect("a job outlasted the check that it was unfinished");
    // Both ranks finish training and retry the final upload meanwhile.
    let prefix = format!("checkpoint step {total}: ");
    c.wait_for(
        "both ranks to retry the final checkpoint",
        Duration::from_secs(600),
        || {
            let text = std::fs::read_to_string(&tee).unwrap_or_default();
            text.lines()
                .filter(|l| l.starts_with(&prefix) && l.contains("retrying"))
                .count()
                >= 2
        },
    );
    c.restart_coordinator();
    let job = c.wait_state(&id, "succeeded", Duration::from_secs(240));
    assert_eq!(job["attempts"].as_array().map(Vec::len), Some(1), "{job}");
    assert_eq!(steps(&c, &id).last(), Some(&total));
    let got = c.export(&id, &dir.join("resumed.safetensors"));
    let reference = c.submit(&spec, &[]);
    c.wait_state(&reference, "succeeded", Duration::from_secs(600));
    let expected = c.export(&reference, &dir.join("reference.safetensors"));
    assert!(
        got == expected,
        "the export differs from the uninterrupted run's"
    );
}

/// Bytes the files under `dir` occupy on disk.
fn disk_use(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_use(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Retention over a long run keeps the chunk files within 1.3× the live checkpoints, before
/// and after a restart; `convoy job delete` frees the rest (or keeps the checkpoints when
/// asked), and the deleted job's id is not given to the next job.
#[test]
fn retention_bounds_the_disk_and_a_deleted_job_frees_it() {
    let _g = serial();
    let mut c = Cluster::start(5_000);
    c.add_worker("alpha", 2);
    c.wait_workers(1);
    let dir = c.dir.path().to_path_buf();
    let chunks = dir.join("coordinator/checkpoints/chunks");
    let live = |c: &Cluster, id: &str| -> u64 {
        c.json(&["checkpoints", id])
            .as_array()
            .expect("a list")
            .iter()
            .map(|m| m["size_bytes"].as_u64().expect("size"))
            .sum()
    };
    let id = c.submit(&spec(&dir, "long", 3_000, 20, ""), &[]);
    c.wait_state(&id, "succeeded", Duration::from_secs(240));
    assert_eq!(steps(&c, &id).len(), 3, "keep_last = 3 by default");
    let (kept, disk) = (live(&c, &id), disk_use(&chunks));
    assert!(
        disk as f64 <= 1.3 * kept as f64,
        "{disk} bytes on disk for {kept} live"
    );
    assert!(c.stop_coordinator());
    c.restart_coordinator();
    let disk = disk_use(&chunks);
    assert!(
        disk as f64 <= 1.3 * kept as f64,
        "after a restart: {disk} bytes on disk for {kept} live"
    );

    let kept_job = c.submit(&spec(&dir, "kept", 40, 20, ""), &[]);
    c.wait_state(&kept_job, "succeeded", Duration::from_secs(120));
    let o = c.convoy(&["job", "delete", &kept_job, "--keep-checkpoints"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    c.export(&kept_job, &dir.join("kept.safetensors"));

    let o = c.convoy(&["job", "delete", &id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let jobs = c.json(&["jobs"]);
    assert!(
        jobs.as_array()
            .expect("a list")
            .iter()
            .all(|j| j["id"] != id.as_str() && j["id"] != kept_job.as_str()),
        "{jobs}"
    );
    assert!(!chunks.join(id.trim_start_matches("job-")).exists());
    let o = c.convoy(&["logs", &id]);
    assert!(!o.status.success(), "the deleted job's logs are gone");
    let next = c.submit(&spec(&dir, "next", 40, 0, ""), &[]);
    assert_eq!(next, "job-3", "ids are never reused");
}

#[test]
fn a_coordinator_killed_during_uploads_leaves_no_partial_checkpoint_and_the_job_goes_on() {
    let _g = serial();
    let mut c = Cluster::start(5_000);
    c.add_worker("alpha", 2);
    c.wait_workers(1);
    let dir = c.dir.path().to_path_buf();
    // A checkpoint every step keeps uploads in flight nearly all the time.
    let id = c.submit(&spec(&dir, "busy", 2_000, 1, ""), &[]);
    c.wait_for("some checkpoints", Duration::from_secs(120), || {
        steps(&c, &id).len() >= 2
    });
    c.kill_coordinator();
    // Open the store as the restarted coordinator will: every checkpoint it lists verifies.
    {
        let store = CheckpointStore::open_dir(&c.dir.path().join("coordinator/checkpoints"))
            .expect("store");
        let job = JobId(id.trim_start_matches("job-").parse().expect("job number"));
        let list = store.list(job).expect("list");
        assert!(
            !list.is_empty(),
            "the checkpoints committed before the kill are kept"
        );
        for m in &list {
            store
                .verify(m)
                .unwrap_or_else(|e| panic!("step {} is listed but does not verify: {e}", m.step));
        }
    }
    c.restart_coordinator();
    let job = c.wait_state(&id, "succeeded", Duration::from_secs(240));
    assert_eq!(job["attempts"].as_array().map(Vec::len), Some(1), "{job}");
    let kept = steps(&c, &id);
    assert_eq!(kept.last(), Some(&2_000), "{kept:?}");
}
