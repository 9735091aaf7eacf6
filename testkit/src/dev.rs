//! `convoy dev` as a user runs it, for the tests of what it starts: the command's own cluster
//! (secured by default), which it says how to reach on its ready line; [`Dev::convoy`] runs
//! the CLI against it the way that line tells a user to. Dropping a [`Dev`] stops it as Ctrl-C
//! would (it stops its daemons), killing it if it does not stop.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{bin_dir, repo_root};

/// How long `convoy dev` may take to stop its daemons (each gets 15 s) before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(120);

pub struct Dev {
    child: Child,
    /// `CONVOY_COORDINATOR`, `CONVOY_TOKEN_FILE`, `CONVOY_TLS_CA` from the ready line.
    env: HashMap<String, String>,
    /// What `convoy dev` wrote on stderr, for failure messages.
    said: Arc<Mutex<String>>,
    /// The CLI's configuration home: no token of the machine's user stands in.
    home: tempfile::TempDir,
}

impl Dev {
    /// Runs `convoy dev ARGS` (no spec: the cluster waits) and waits, at most `timeout`, for
    /// its ready line.
    pub fn start(args: &[&str], timeout: Duration) -> Dev {
        let mut child = Command::new(bin_dir().join("convoy"))
            .arg("dev")
            .args(args)
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run convoy dev");
        let stderr = child.stderr.take().expect("convoy dev's stderr");
        let said = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        {
            let said = said.clone();
            // Read to the end, so that convoy dev never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    {
                        let mut s = said.lock().unwrap_or_else(|e| e.into_inner());
                        s.push_str(&line);
                        s.push('\n');
                    }
                    if line.contains("ready;") {
                        let _ = ready_tx.send(line);
                    }
                }
            });
        }
        let home = tempfile::tempdir().expect("temp dir");
        let mut dev = Dev {
            child,
            env: HashMap::new(),
            said,
            home,
        };
        let line = match ready_rx.recv_timeout(timeout) {
            Ok(line) => line,
            Err(_) => panic!(
                "convoy dev was not ready within {timeout:?}:\n{}",
                dev.said()
            ),
        };
        // "… ready; CONVOY_COORDINATOR=URL CONVOY_TOKEN_FILE=F CONVOY_TLS_CA=F convoy submit …"
        dev.env = line
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .filter(|(k, _)| k.starts_with("CONVOY_"))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(
            dev.env.contains_key("CONVOY_COORDINATOR"),
            "no address on the ready line: {line}"
        );
        dev
    }

    /// Everything `convoy dev` has written on stderr so far.
    pub fn said(&self) -> String {
        self.said.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs `convoy ARGS` against the cluster, as its ready line says.
    pub fn convoy(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin_dir().join("convoy"));
        cmd.args(args)
            .env_remove("CONVOY_TOKEN")
            .env_remove("CONVOY_TOKEN_FILE")
            .env_remove("CONVOY_TLS_CA")
            .env("XDG_CONFIG_HOME", self.home.path())
            .current_dir(repo_root());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.output().expect("run convoy")
    }

    /// Runs `convoy ARGS --json` and parses its output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        crate::json_output(args, &self.convoy(&a))
    }

    /// Submits `spec` and returns the job id.
    pub fn submit(&self, spec: &Path) -> String {
        let v = self.json(&["submit", spec.to_str().expect("utf-8 path")]);
        v["job_id"].as_str().expect("a job id").to_string()
    }

    /// Polls the job every 200 ms until it is in `state`; panics, with what `convoy dev` said,
    /// after `timeout` or once the job is in another final state.
    pub fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let job = self.json(&["job", "show", id]);
            if job["state"] == state {
                return job;
            }
            let done =
                ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap_or(""));
            if done || Instant::now() > deadline {
                panic!(
                    "{id} is not {state} (after at most {timeout:?}): {job}\n{}",
                    self.said()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM (what Ctrl-C does); waits until it has stopped its daemons and exited.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate().unwrap_or_else(|| {
            panic!(
                "convoy dev did not stop within {STOP_WAIT:?} of SIGTERM:\n{}",
                self.said()
            )
        })
    }

    fn terminate(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.terminate();
    }
}
