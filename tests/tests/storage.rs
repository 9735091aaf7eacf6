//! Storage faults under a real coordinator: its data directory on a tmpfs that fills up during
//! training; and one replica's of three, which stops while the others go on. Mounting needs
//! root; elsewhere the tests say they were skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use convoy_testkit::cluster::Cluster;
use convoy_testkit::serial;
use convoy_testkit::specs::digits as digits_spec;

/// A tmpfs mounted for the test's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `path`; `None` where this process may not mount.
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .ok()?
            .success();
        mounted.then(|| Tmpfs(path.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

/// Fills the filesystem holding `dir` with a file of zeros until a write fails for want of
/// space, as another program on the machine might.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("create the filler");
    let block = vec![0u8; 1 << 20];
    loop {
        match f.write_all(&block).and_then(|()| f.sync_data()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => return path,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

/// A full disk: the coordinator stops with status 1 and one line naming the store and the
/// error, rather than hanging or serving on; after space is freed a restart recovers the job
/// and every checkpoint it had committed, and the job goes on.
#[test]
fn a_full_disk_stops_the_coordinator_and_a_restart_recovers_everything() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(_fs) = Tmpfs::mount(&dir.path().join("coordinator"), "256m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let mut c = Cluster::start_in(dir, 5_000);
    c.add_worker("alpha", 2);
    c.wait_workers(1);
    let spec = digits_spec(c.dir.path(), "filler", 1_000_000, 2);
    let mut text = std::fs::read_to_string(&spec).expect("spec");
    // Every checkpoint kept, so that each one committed before the disk filled can be looked
    // for afterwards.
    text.push_str("\n[checkpoint]\ninterval = 20\nkeep_last = 1000000\n");
    std::fs::write(&spec, text).expect("write spec");
    let id = c.submit(&spec, &[]);
    c.wait_for("two checkpoints", Duration::from_secs(120), || {
        c.json(&["checkpoints", &id]).as_array().map_or(0, Vec::len) >= 2
    });
    let before = c.json(&["checkpoints", &id]);
    let filler = fill(&c.dir.path().join("coordinator"));

    let status = c
        .wait_coordinator_exit(Duration::from_secs(600))
        .expect("the coordinator must stop once its disk is full");
    assert_eq!(status.code(), Some(1), "{status}");
    one_line_naming_the_full_disk(&c.dir.path().join("coordinator.log"));

    std::fs::remove_file(&filler).expect("free the space");
    c.restart_coordinator();
    let after = c.json(&["checkpoints", &id]);
    let after = after.as_array().expect("a list");
    for m in before.as_array().expect("a list") {
        let step = m["step"].as_u64().expect("step");
        assert!(
            after.iter().any(|a| a["step"].as_u64() == Some(step)),
            "step {step} was committed before the disk filled and is gone"
        );
    }
    for m in after {
        let step = m["step"].as_u64().expect("step");
        let o = c.convoy(&["checkpoint", "verify", &format!("{id}@{step}")]);
        assert!(
            o.status.success(),
            "step {step}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // The job trains on and checkpoints again.
    let newest = after
        .iter()
        .filter_map(|m| m["step"].as_u64())
        .max()
        .unwrap_or(0);
    c.wait_for("a newer checkpoint", Duration::from_secs(120), || {
        c.json(&["checkpoints", &id])
            .as_array()
            .is_some_and(|l| l.iter().any(|m| m["step"].as_u64() > Some(newest)))
    });
    assert!(c.convoy(&["cancel", &id]).status.success());
}

/// A replica whose disk fills stops with one line naming the full disk; the other two go on
/// accepting writes, and once space is freed the replica starts again and catches up.
#[test]
fn a_replica_whose_disk_fills_stops_and_the_others_go_on() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(_fs) = Tmpfs::mount(&dir.path().join("coordinator-3"), "64m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let mut c = Cluster::start_replicated_in(dir, 3, 5_000);
    c.wait_leader(Duration::from_secs(30));
    let filler = fill(&c.member_dir(3));
    // Every write is stored by every replica: replica 3 soon fails to store one.
    let spec = digits_spec(c.dir.path(), "queued", 50, 1);
    let mut submitted = vec![];
    let mut status = None;
    for _ in 0..200 {
        submitted.push(c.submit(&spec, &["--retry-for", "60"]));
        status = c.member_exited(3);
        if status.is_some() {
            break;
        }
    }
    let status = status
        .or_else(|| c.wait_member_exit(3, Duration::from_secs(120)))
        .expect("replica 3 must stop once its disk is full");
    assert_eq!(status.code(), Some(1), "{status}");
    one_line_naming_the_full_disk(&c.dir.path().join("coordinator-3.log"));
    // The two others are a majority: writes go on, and nothing acknowledged is missing.
    submitted.push(c.submit(&spec, &["--retry-for", "60"]));
    for id in &submitted {
        assert_eq!(c.job(id)["state"], "queued", "{id}");
    }
    std::fs::remove_file(&filler).expect("free the space");
    c.restart_member(3);
    let leader = c.wait_leader(Duration::from_secs(30));
    let commit = c.members()[&leader]["commit"].as_u64().expect("commit");
    c.wait_for("replica 3 to catch up", Duration::from_secs(60), || {
        c.members()
            .get(&3)
            .and_then(|m| m["applied"].as_u64())
            .is_some_and(|a| a >= commit)
    });
}

/// The daemon's log at `path` holds exactly one fatal line, and it names the full disk.
fn one_line_naming_the_full_disk(path: &std::path::Path) {
    let log = std::fs::read_to_string(path).expect("log");
    let fatal: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("failed, stopping"))
        .collect();
    assert!(
        fatal.len() == 1 && fatal[0].contains("space left on device"),
        "not one line naming the full disk: {fatal:?}"
    );
}
