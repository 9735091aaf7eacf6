//! A real cluster on 127.0.0.1 for the integration tests: `convoy-coordinator` and
//! `convoy-worker` processes (started by [`convoy_harness`]) with their data in a temporary
//! directory, driven with the `convoy` CLI. Every wait is bounded; the daemons are killed
//! when the cluster is dropped.
//!
//! The cluster runs as a real one must: over TLS with its own CA (`convoy tls init` into
//! `dir/tls`), with an administrator token and a join token (`dir/admin.token`,
//! `dir/join.token`); [`Cluster::convoy`] presents the administrator's, [`Cluster::convoy_as`]
//! another user's, both trusting the CA.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use convoy_harness::{Daemon, Harness, READY_TIMEOUT};
use convoy_service::secret_file;
use serde_json::Value;

use crate::{bin_dir, repo_root};

pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// What clients are given: the coordinator's URL, or the replicas' joined by commas.
    pub addr: String,
    harness: Harness,
    heartbeat_timeout_ms: u64,
    /// One coordinator, or the replicas in node-id order (node `i + 1` at index `i`).
    coordinators: Vec<Member>,
    /// `--peers` of a replicated cluster.
    peers: Option<String>,
    /// More flags for every coordinator.
    coordinator_extra: Vec<String>,
    pub workers: Vec<Daemon>,
}

struct Member {
    /// `host:port` it listens on (decided before it starts: the others must know it).
    listen: String,
    daemon: Option<Daemon>,
    /// Added to the running cluster (started with `--join` and itself in `--peers`).
    joined: bool,
}

/// A port free now, for a replica whose address its peers must know before it starts (the
/// same way a restarted coordinator binds its old port again).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn signal_pid(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{signal} {pid}");
}

impl Cluster {
    /// A coordinator with a short heartbeat timeout (so loss is detected quickly in tests).
    pub fn start(heartbeat_timeout_ms: u64) -> Cluster {
        Cluster::start_in(tempfile::tempdir().expect("temp dir"), heartbeat_timeout_ms)
    }

    /// [`Cluster::start`] in `dir`, which may be prepared (the coordinator's data directory is
    /// `dir/coordinator`, e.g. a small filesystem mounted there).
    pub fn start_in(dir: tempfile::TempDir, heartbeat_timeout_ms: u64) -> Cluster {
        Cluster::start_with_in(dir, heartbeat_timeout_ms, &[])
    }

    /// [`Cluster::start`] with more flags for the coordinator.
    pub fn start_with(heartbeat_timeout_ms: u64, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        Cluster::start_with_in(dir, heartbeat_timeout_ms, extra)
    }

    fn start_with_in(dir: tempfile::TempDir, heartbeat_timeout_ms: u64, extra: &[&str]) -> Cluster {
        let harness = Harness::new(&bin_dir(), dir.path()).expect("a harness");
        harness.check_binaries().expect("the built binaries");
        write_secrets(dir.path());
        let mut c = Cluster {
            dir,
            addr: String::new(),
            harness,
            heartbeat_timeout_ms,
            coordinators: vec![Member {
                listen: "127.0.0.1:0".into(),
                daemon: None,
                joined: false,
            }],
            peers: None,
            coordinator_extra: extra.iter().map(|s| s.to_string()).collect(),
            workers: vec![],
        };
        c.start_member(0);
        c
    }

    /// `n` coordinator replicas (`--peers`, a shared secret), each waited for until it serves
    /// its port; [`Cluster::wait_leader`] waits for an election.
    pub fn start_replicated(n: usize, heartbeat_timeout_ms: u64) -> Cluster {
        Cluster::start_replicated_in(
            tempfile::tempdir().expect("temp dir"),
            n,
            heartbeat_timeout_ms,
        )
    }

    /// [`Cluster::start_replicated`] in `dir`, which may be prepared (replica N's data
    /// directory is `dir/coordinator-N`, e.g. a small filesystem mounted there).
    pub fn start_replicated_in(
        dir: tempfile::TempDir,
        n: usize,
        heartbeat_timeout_ms: u64,
    ) -> Cluster {
        let harness = Harness::new(&bin_dir(), dir.path()).expect("a harness");
        harness.check_binaries().expect("the built binaries");
        write_secrets(dir.path());
        secret_file::write(&dir.path().join("cluster-secret"), "test-secret-0123456789")
            .expect("write the secret");
        let coordinators: Vec<Member> = (0..n)
            .map(|_| Member {
                listen: format!("127.0.0.1:{}", free_port()),
                daemon: None,
                joined: false,
            })
            .collect();
        let peers = coordinators
            .iter()
            .enumerate()
            .map(|(i, m)| format!("{}={}", i + 1, m.listen))
            .collect::<Vec<_>>()
            .join(",");
        let addr = coordinators
            .iter()
            .map(|m| format!("http://{}", m.listen))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            dir,
            addr,
            harness,
            heartbeat_timeout_ms,
            coordinators,
            peers: Some(peers),
            coordinator_extra: vec![],
            workers: vec![],
        };
        for i in 0..n {
            c.start_member(i);
        }
        c
    }

    fn member_name(&self, i: usize) -> String {
        if self.peers.is_some() {
            format!("coordinator-{}", i + 1)
        } else {
            "coordinator".into()
        }
    }

    /// The flags replica `i` (0-based) runs with.
    fn member_args(&self, i: usize) -> Vec<String> {
        let name = self.member_name(i);
        let mut args: Vec<String> = [
            "--listen",
            &self.coordinators[i].listen,
            "--data-dir",
            &self.dir.path().join(&name).display().to_string(),
            "--heartbeat-timeout-ms",
            &self.heartbeat_timeout_ms.to_string(),
            "--heartbeat-interval-ms",
            "250",
            "--admin-token-file",
            &self.admin_token_file().display().to_string(),
            "--join-token-file",
            &self.join_token_file().display().to_string(),
            "--tls-cert",
            &self.tls_file("coordinator.pem"),
            "--tls-key",
            &self.tls_file("coordinator.key"),
            "--tls-ca",
            &self.tls_file("ca.pem"),
        ]
        .map(String::from)
        .to_vec();
        args.extend(self.coordinator_extra.iter().cloned());
        if let Some(founding) = &self.peers {
            let secret = self.dir.path().join("cluster-secret");
            let member = &self.coordinators[i];
            let peers = if member.joined {
                args.push("--join".into());
                format!("{founding},{}={}", i + 1, member.listen)
            } else {
                founding.clone()
            };
            args.extend(
                [
                    "--node-id",
                    &(i + 1).to_string(),
                    "--peers",
                    &peers,
                    "--cluster-id",
                    "test-cluster",
                    "--cluster-secret-file",
                    &secret.display().to_string(),
                ]
                .map(String::from),
            );
        }
        args
    }

    fn start_member(&mut self, i: usize) {
        let name = self.member_name(i);
        let args = self.member_args(i);
        let d = self
            .harness
            .coordinator(&name, &args)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tails()));
        if self.peers.is_none() {
            self.addr = d.url().expect("the coordinator's address");
            self.coordinators[i].listen = self.addr.trim_start_matches("http://").to_string();
        }
        self.coordinators[i].daemon = Some(d);
    }

    /// The node id of the replica that serves as leader, by each replica's own account
    /// (`convoy coordinators`); `None` while there is none.
    pub fn leader(&self) -> Option<u64> {
        let out = self.convoy(&["coordinators", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array()?
            .iter()
            .find(|m| m["role"] == "leader" && m["serving"] == true)
            .and_then(|m| m["node_id"].as_u64())
    }

    /// Waits for a serving leader; its node id.
    pub fn wait_leader(&self, timeout: Duration) -> u64 {
        let mut leader = None;
        self.wait_for("a leader", timeout, || {
            leader = self.leader();
            leader.is_some()
        });
        leader.expect("a leader")
    }

    /// SIGKILLs replica `node` (no shutdown, no snapshot).
    pub fn kill_member(&mut self, node: u64) {
        if let Some(mut d) = self.coordinators[node as usize - 1].daemon.take() {
            d.kill();
        }
    }

    /// SIGTERMs replica `node` and waits for it to exit (SIGKILL after 30 s); true when it
    /// exited by itself.
    pub fn stop_member(&mut self, node: u64) -> bool {
        self.coordinators[node as usize - 1]
            .daemon
            .take()
            .is_some_and(|mut d| d.stop(Duration::from_secs(30)))
    }

    /// Sends `signal` (`STOP`, `CONT`) to replica `node`.
    pub fn signal_member(&self, node: u64, signal: &str) {
        let d = self.coordinators[node as usize - 1]
            .daemon
            .as_ref()
            .expect("a running replica");
        signal_pid(d.pid(), signal);
    }

    /// Sends `signal` (`STOP`, `CONT`) to worker daemon `name`.
    pub fn signal_worker(&self, name: &str, signal: &str) {
        let w = self
            .workers
            .iter()
            .find(|w| w.name() == name)
            .expect("a running worker");
        signal_pid(w.pid(), signal);
    }

    /// Whether replica `node` has exited by itself (its status then), without waiting.
    pub fn member_exited(&mut self, node: u64) -> Option<std::process::ExitStatus> {
        let member = &mut self.coordinators[node as usize - 1];
        let status = member.daemon.as_mut()?.exited()?;
        member.daemon = None;
        Some(status)
    }

    /// Replica `node`'s data directory.
    pub fn member_dir(&self, node: u64) -> std::path::PathBuf {
        self.dir.path().join(self.member_name(node as usize - 1))
    }

    /// Each replica's own account of itself (`convoy coordinators --json`), by node id;
    /// unreachable ones are missing.
    pub fn members(&self) -> std::collections::BTreeMap<u64, Value> {
        let out = self.convoy(&["coordinators", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| Some((m["node_id"].as_u64()?, m.clone())))
            .collect()
    }

    /// Starts replica `node` again on its address and data directory.
    pub fn restart_member(&mut self, node: u64) {
        self.start_member(node as usize - 1);
    }

    /// Runs replica `node` as its unit would, expecting it to refuse to start: its output.
    pub fn run_member_once(&self, node: u64) -> Output {
        Command::new(bin_dir().join("convoy-coordinator"))
            .args(self.member_args(node as usize - 1))
            .output()
            .expect("run convoy-coordinator")
    }

    /// Adds a replica to the running cluster (`convoy coordinators --add`) and starts it with
    /// `--join`; its node id.
    pub fn add_member(&mut self) -> u64 {
        let node = self.coordinators.len() as u64 + 1;
        let listen = format!("127.0.0.1:{}", free_port());
        let out = self.convoy(&["coordinators", "--add", &format!("{node}={listen}")]);
        assert!(
            out.status.success(),
            "adding coordinator {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.addr = format!("{},http://{listen}", self.addr);
        self.coordinators.push(Member {
            listen,
            daemon: None,
            joined: true,
        });
        self.start_member(node as usize - 1);
        node
    }

    /// Starts a worker daemon named `name` with `slots` slots and waits until the coordinator
    /// has accepted it.
    pub fn add_worker(&mut self, name: &str, slots: u32) {
        self.add_worker_with(name, slots, &[]);
    }

    /// [`Cluster::add_worker`] with more flags for the daemon.
    pub fn add_worker_with(&mut self, name: &str, slots: u32, extra: &[String]) {
        let mut args = self.worker_args(name, slots);
        args.extend_from_slice(extra);
        let mut w = self.spawn_worker(name, &args);
        if let Err(e) = w.wait_ready(READY_TIMEOUT) {
            panic!("{e}\n{}", self.log_tails());
        }
        self.workers.push(w);
    }

    /// Starts a worker daemon with exactly `args`, without waiting for it.
    pub fn spawn_worker(&self, name: &str, args: &[String]) -> Daemon {
        self.harness
            .spawn_worker(name, args)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The flags [`Cluster::add_worker`] starts a worker with.
    pub fn worker_args(&self, name: &str, slots: u32) -> Vec<String> {
        [
            "--coordinator",
            &self.addr,
            "--name",
            name,
            "--slots",
            &slots.to_string(),
            "--data-dir",
            &self.dir.path().join(name).display().to_string(),
            "--threads-per-rank",
            "1",
            "--stop-grace-ms",
            "3000",
            "--collective-timeout-ms",
            "20000",
            "--join-token-file",
            &self.join_token_file().display().to_string(),
            "--tls-ca",
            &self.tls_file("ca.pem"),
        ]
        .map(String::from)
        .into_iter()
        // CI runs the tests as root; the worker refuses that unless told.
        .chain(convoy_harness::running_as_root().then(|| "--allow-root-ranks".to_string()))
        .collect()
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
        self.kill_member(1);
    }

    /// SIGTERMs the coordinator and waits up to 30 s for it to exit (then SIGKILLs it); true
    /// when it exited by itself.
    pub fn stop_coordinator(&mut self) -> bool {
        self.coordinators[0]
            .daemon
            .take()
            .is_some_and(|mut c| c.stop(Duration::from_secs(30)))
    }

    /// Waits up to `timeout` for the coordinator to exit by itself; its exit status.
    pub fn wait_coordinator_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.wait_member_exit(1, timeout)
    }

    /// Waits up to `timeout` for replica `node` to exit by itself; its exit status.
    pub fn wait_member_exit(
        &mut self,
        node: u64,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let member = &mut self.coordinators[node as usize - 1];
        let c = member.daemon.as_mut()?;
        while Instant::now() < deadline {
            if let Some(status) = c.exited() {
                member.daemon = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Starts the coordinator again on the same address and data directory.
    pub fn restart_coordinator(&mut self) {
        self.start_member(0);
    }

    /// SIGKILLs the worker named `name`.
    pub fn kill_worker(&mut self, name: &str) {
        if let Some(w) = self.workers.iter_mut().find(|w| w.name() == name) {
            w.kill();
        }
    }

    /// The bootstrap administrator's token file.
    pub fn admin_token_file(&self) -> std::path::PathBuf {
        self.dir.path().join("admin.token")
    }

    /// The bootstrap administrator's token.
    pub fn admin_token(&self) -> String {
        secret_file::read(&self.admin_token_file()).expect("the administrator's token")
    }

    /// A file of the cluster's PKI (`ca.pem`, `coordinator.pem`, `worker.key`, …).
    pub fn tls_file(&self, name: &str) -> String {
        self.dir.path().join("tls").join(name).display().to_string()
    }

    /// The join token file workers register with.
    pub fn join_token_file(&self) -> std::path::PathBuf {
        self.dir.path().join("join.token")
    }

    /// Runs `convoy` against this cluster as its administrator.
    pub fn convoy(&self, args: &[&str]) -> Output {
        self.convoy_with(
            &[(
                "CONVOY_TOKEN_FILE",
                &self.admin_token_file().display().to_string(),
            )],
            args,
        )
    }

    /// Runs `convoy` against this cluster presenting `token` (empty: none).
    pub fn convoy_as(&self, token: &str, args: &[&str]) -> Output {
        self.convoy_with(&[("CONVOY_TOKEN", token)], args)
    }

    fn convoy_with(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut cmd = Command::new(bin_dir().join("convoy"));
        cmd.args(args)
            .env("CONVOY_COORDINATOR", &self.addr)
            .env_remove("CONVOY_TOKEN")
            .env_remove("CONVOY_TOKEN_FILE")
            .env("CONVOY_TLS_CA", self.tls_file("ca.pem"))
            // No token of the machine's user may stand in for the one given here.
            .env("XDG_CONFIG_HOME", self.dir.path())
            .current_dir(repo_root());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run convoy")
    }

    /// Creates an API token for `user` (an administrator's when `admin`); the token.
    pub fn create_token(&self, user: &str, admin: bool) -> String {
        let mut args = vec!["admin", "token", "create", "--user", user];
        if admin {
            args.push("--admin");
        }
        let out = self.convoy(&args);
        assert!(
            out.status.success(),
            "creating a token for {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs `convoy ARGS --json` and parses its output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        crate::json_output(args, &self.convoy(&a))
    }

    pub fn status(&self) -> Value {
        self.json(&["status"])
    }

    pub fn job(&self, id: &str) -> Value {
        self.json(&["job", "show", id])
    }

    /// Exports the checkpoint `reference` (`job-1`, `job-1@STEP`) as safetensors into `out`
    /// and returns its bytes.
    pub fn export(&self, reference: &str, out: &Path) -> Vec<u8> {
        let o = self.convoy(&[
            "checkpoint",
            "export",
            reference,
            "--format",
            "safetensors",
            "-o",
            out.to_str().expect("utf-8"),
        ]);
        assert!(
            o.status.success(),
            "export {reference}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::read(out).expect("exported file")
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
    /// Waits until job `id` is in `state`; a job that ends in another final state fails the
    /// test at once, with the job, instead of at the timeout.
    pub fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        let mut last = Value::Null;
        self.wait_for(&format!("{id} to be {state}"), timeout, || {
            last = self.job(id);
            let now = last["state"].as_str().unwrap_or("");
            assert!(
                now == state || !["succeeded", "failed", "cancelled"].contains(&now),
                "{id} ended {now}, not {state}: {last}\n{}",
                self.log_tails()
            );
            now == state
        });
        last
    }

    /// Waits until the job's current attempt reports a step past `step`.
    pub fn wait_step(&self, id: &str, step: u64, timeout: Duration) -> Value {
        let mut last = Value::Null;
        self.wait_for(&format!("{id} past step {step}"), timeout, || {
            last = self.job(id);
            last["state"] == "running" && last["step"].as_u64().unwrap_or(0) > step
        });
        last
    }

    /// The last lines of every daemon's log, for a failure message.
    pub fn log_tails(&self) -> String {
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

/// The administrator and join tokens and the CA every test cluster runs with.
fn write_secrets(dir: &Path) {
    for (file, token) in [
        ("admin.token", "test-admin-token-0123456789abcdef"),
        ("join.token", "test-join-token-0123456789abcdef"),
    ] {
        secret_file::write(&dir.join(file), token).expect("write a token file");
    }
    let out = Command::new(bin_dir().join("convoy"))
        .args(["tls", "init", "--out"])
        .arg(dir.join("tls"))
        .output()
        .expect("run convoy tls init");
    assert!(
        out.status.success(),
        "convoy tls init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
