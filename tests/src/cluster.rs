//! A real cluster on 127.0.0.1 for the integration tests: `convoy-coordinator` and
//! `convoy-worker` processes with their data in a temporary directory, driven with the
//! `convoy` CLI. Every wait is bounded; daemons are killed when the cluster is dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{convoy_bin, repo_root};

fn sibling(name: &str) -> PathBuf {
    convoy_bin().with_file_name(name)
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub addr: String,
    heartbeat_timeout_ms: u64,
    coordinator: Option<Child>,
    pub workers: Vec<(String, Child)>,
}

impl Cluster {
    /// A coordinator with a short heartbeat timeout (so loss is detected quickly in tests).
    pub fn start(heartbeat_timeout_ms: u64) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut c = Cluster {
            dir,
            addr: String::new(),
            heartbeat_timeout_ms,
            coordinator: None,
            workers: vec![],
        };
        c.start_coordinator("127.0.0.1:0");
        c
    }

    fn start_coordinator(&mut self, listen: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("coordinator.log"))
            .expect("log file");
        let mut child = Command::new(sibling("convoy-coordinator"))
            .args(["--listen", listen, "--data-dir"])
            .arg(self.dir.path().join("coordinator"))
            .arg("--heartbeat-timeout-ms")
            .arg(self.heartbeat_timeout_ms.to_string())
            .arg("--heartbeat-interval-ms")
            .arg("250")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start convoy-coordinator");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(l)) = lines.next() {
                let _ = tx.send(l);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the coordinator prints its address");
        let addr = line.strip_prefix("listening on ").expect("address line");
        self.addr = format!("http://{addr}");
        self.coordinator = Some(child);
    }

    /// Starts a worker daemon named `name` with `slots` slots.
    pub fn add_worker(&mut self, name: &str, slots: u32) {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log");
        let child = Command::new(sibling("convoy-worker"))
            .args(["--coordinator", &self.addr, "--name", name])
            .arg("--slots")
            .arg(slots.to_string())
            .arg("--data-dir")
            .arg(self.dir.path().join(name))
            .args(["--threads-per-rank", "1", "--stop-grace-ms", "3000"])
            .args(["--collective-timeout-ms", "20000"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start convoy-worker");
        self.workers.push((name.to_string(), child));
    }

    /// Waits until `n` workers are alive.
    pub fn wait_workers(&self, n: u64) {
        self.wait_for(
            &format!("{n} workers alive"),
            Duration::from_secs(30),
            || self.status()["workers_alive"].as_u64() == Some(n),
        );
    }

    /// SIGKILLs the coordinator (no shutdown, no snapshot).
    pub fn kill_coordinator(&mut self) {
        if let Some(mut c) = self.coordinator.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the coordinator again on the same address and data directory.
    pub fn restart_coordinator(&mut self) {
        let listen = self.addr.trim_start_matches("http://").to_string();
        self.start_coordinator(&listen);
    }

    /// SIGKILLs the worker named `name`.
    pub fn kill_worker(&mut self, name: &str) {
        if let Some((_, c)) = self.workers.iter_mut().find(|(n, _)| n == name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `convoy` against this cluster.
    pub fn convoy(&self, args: &[&str]) -> Output {
        Command::new(convoy_bin())
            .args(args)
            .env("CONVOY_COORDINATOR", &self.addr)
            .current_dir(repo_root())
            .output()
            .expect("run convoy")
    }

    /// Runs `convoy ARGS --json` and parses its output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.convoy(&a);
        assert!(
            out.status.success(),
            "convoy {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    pub fn status(&self) -> Value {
        self.json(&["status"])
    }

    pub fn job(&self, id: &str) -> Value {
        self.json(&["job", "show", id])
    }

    /// Submits `spec` (extra CLI flags in `flags`) and returns the job id.
    pub fn submit(&self, spec: &Path, flags: &[&str]) -> String {
        let mut args = vec!["submit", spec.to_str().expect("utf-8 path"), "--json"];
        args.extend_from_slice(flags);
        let out = self.convoy(&args);
        assert!(
            out.status.success(),
            "submit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        v["job_id"].as_str().expect("job id").to_string()
    }

    /// Polls `cond` every 100 ms; panics (with the daemons' logs' tails) after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}\n{}",
            self.log_tails()
        );
    }

    /// Waits until the job is in `state` (queued, running, succeeded, failed, cancelled).
    pub fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        let mut last = Value::Null;
        self.wait_for(&format!("{id} to be {state}"), timeout, || {
            last = self.job(id);
            last["state"] == state
        });
        last
    }

    fn log_tails(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.path()) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log")
                    && let Ok(text) = std::fs::read_to_string(&p)
                {
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                    out += &format!("--- {}\n{tail}\n", p.display());
                }
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, w) in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        self.kill_coordinator();
    }
}

/// `examples/digits-mlp.toml` with `steps` steps and `world_size` ranks, written into `dir`
/// (with an absolute data path), for jobs of a chosen length.
pub fn digits_spec(dir: &Path, name: &str, steps: u64, world_size: usize) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("examples/digits-mlp.toml"))
        .expect("example spec");
    let data = repo_root().join("examples/data/digits.csv.gz");
    let data = data.canonicalize().expect("data file");
    let text = text
        .replace(
            "name = \"digits-mlp\"",
            &format!("name = \"{name}\"\nworld_size = {world_size}"),
        )
        .replace("steps = 600", &format!("steps = {steps}"))
        .replace(
            "\"data/digits.csv.gz\"",
            &format!("{:?}", data.display().to_string()),
        );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write spec");
    path
}
