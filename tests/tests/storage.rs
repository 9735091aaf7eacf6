//! Storage faults under a real coordinator: its data directory on a small tmpfs that the job's
//! checkpoints fill. Mounting needs root; elsewhere the test says it was skipped.

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

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remounting {} with size {size}", self.0.display());
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

/// A full disk: the coordinator stops with status 1 and one line naming the store and the
/// error, rather than hanging or serving on; after space is freed a restart recovers the job
/// and every checkpoint it had committed, and the job goes on.
#[test]
fn a_full_disk_stops_the_coordinator_and_a_restart_recovers_everything() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(fs) = Tmpfs::mount(&dir.path().join("coordinator"), "12m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let mut c = Cluster::start_in(dir, 5_000);
    c.add_worker("alpha", 2);
    c.wait_workers(1);
    // A checkpoint every step, all kept: they fill the 12 MiB.
    let spec = digits_spec(c.dir.path(), "filler", 1_000_000, 2);
    let mut text = std::fs::read_to_string(&spec).expect("spec");
    text.push_str("\n[checkpoint]\ninterval = 1\nkeep_last = 1000000\n");
    std::fs::write(&spec, text).expect("write spec");
    let id = c.submit(&spec, &[]);

    let status = c
        .wait_coordinator_exit(Duration::from_secs(600))
        .expect("the coordinator must stop once its disk is full");
    assert_eq!(status.code(), Some(1), "{status}");
    let log = std::fs::read_to_string(c.dir.path().join("coordinator.log")).expect("log");
    let fatal: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("failed, stopping"))
        .collect();
    assert!(
        fatal.iter().any(|l| l.contains("space left on device")),
        "no line names the full disk: {fatal:?}"
    );

    fs.resize("256m");
    c.restart_coordinator();
    let saved = c.json(&["checkpoints", &id]);
    let saved = saved.as_array().expect("a list");
    assert!(!saved.is_empty(), "the committed checkpoints are kept");
    for m in [&saved[0], &saved[saved.len() - 1]] {
        let step = m["step"].as_u64().expect("step");
        let o = c.convoy(&["checkpoint", "verify", &format!("{id}@{step}")]);
        assert!(
            o.status.success(),
            "step {step}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let job = c.job(&id);
    assert!(
        ["running", "queued"].contains(&job["state"].as_str().unwrap_or("")),
        "{job}"
    );
    // It trains on past the checkpoints it had.
    let newest = saved[saved.len() - 1]["step"].as_u64().expect("step");
    c.wait_step(&id, newest + 5, Duration::from_secs(120));
    assert!(c.convoy(&["cancel", &id]).status.success());
}
