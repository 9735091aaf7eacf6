//! The ranks of this worker: child processes, their output, their exits.
//!
//! Each rank runs in its own process group (so a stop reaches whatever it forks) and dies
//! with the daemon (`PR_SET_PDEATHSIG`), so a crashed daemon never leaves ranks that no one
//! supervises. A rank's stdout and stderr are read line by line and shipped to the
//! coordinator; the last lines are kept for the exit report, which is sent only after all of
//! the rank's lines have been shipped, so a job that has ended has its whole log.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use convoy_proto::v1 as pb;
use convoy_service::RankLaunch;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::config::WorkerConfig;
use crate::logship::LogMsg;

/// The most a rank's output line is read at once (the coordinator keeps 16 KiB of it).
const MAX_LINE_READ: u64 = 64 << 10;

/// How long a rank's exit report waits for its last log lines to be shipped.
const FLUSH_WAIT: Duration = Duration::from_secs(30);

/// Lines of a rank's output kept for its exit report.
const TAIL_LINES: usize = 20;

/// One rank of one attempt.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RankId {
    pub job_id: String,
    pub generation: u64,
    pub rank: u32,
}

impl std::fmt::Display for RankId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} generation {} rank {}",
            self.job_id, self.generation, self.rank
        )
    }
}

#[derive(Default)]
struct Table {
    /// Process group id of each running rank.
    running: HashMap<RankId, i32>,
    /// Every rank started by this daemon: a repeated start (the coordinator re-sends starts
    /// when a worker reconnects) is ignored.
    seen: HashSet<RankId>,
    /// The GPU each running CUDA rank holds, as an index into the daemon's visible GPUs (one
    /// rank per GPU, as the scheduler places them).
    gpus: HashMap<RankId, u32>,
}

/// The lowest GPU index below `total` that no running rank holds.
fn free_gpu(total: u32, held: impl Iterator<Item = u32>) -> Option<u32> {
    let held: HashSet<u32> = held.collect();
    (0..total).find(|g| !held.contains(g))
}

pub struct Supervisor {
    config: Arc<WorkerConfig>,
    /// `LD_LIBRARY_PATH` for CUDA ranks when the daemon had to make libnccl loadable.
    cuda_library_path: Option<String>,
    table: Mutex<Table>,
    logs: mpsc::Sender<LogMsg>,
    exits: Mutex<Vec<pb::RankExit>>,
    /// Wakes the exit reporter.
    pub exited: Notify,
    /// Wakes whoever waits for every rank to be gone.
    emptied: Notify,
    /// Wakes CUDA ranks waiting for a GPU that a stopping rank still holds.
    gpu_freed: Notify,
}

/// How much longer than the stop grace a CUDA rank waits for a GPU held by a stopping rank:
/// the grace ends in SIGKILL, and the exit is seen shortly after.
const GPU_WAIT_SLACK: Duration = Duration::from_secs(5);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Supervisor {
    pub fn new(
        config: Arc<WorkerConfig>,
        logs: mpsc::Sender<LogMsg>,
        cuda_library_path: Option<String>,
    ) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            config,
            cuda_library_path,
            table: Mutex::new(Table::default()),
            logs,
            exits: Mutex::new(vec![]),
            exited: Notify::new(),
            emptied: Notify::new(),
            gpu_freed: Notify::new(),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ranks running now, for heartbeats and registration.
    pub fn running(&self) -> Vec<pb::RunningRank> {
        self.table()
            .running
            .keys()
            .map(|k| pb::RunningRank {
                job_id: k.job_id.clone(),
                generation: k.generation,
                rank: k.rank,
            })
            .collect()
    }

    /// Exit reports not yet accepted by the coordinator.
    pub fn take_exits(&self) -> Vec<pb::RankExit> {
        std::mem::take(&mut *self.exits.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts back reports that could not be delivered.
    pub fn return_exits(&self, mut back: Vec<pb::RankExit>) {
        let mut exits = self.exits.lock().unwrap_or_else(|e| e.into_inner());
        back.append(&mut exits);
        *exits = back;
    }

    fn report_exit(&self, exit: pb::RankExit) {
        self.exits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(exit);
        self.exited.notify_one();
    }

    /// Starts the rank `s` describes, unless this daemon already started it.
    pub fn start(self: &Arc<Self>, s: pb::StartRank) {
        let key = RankId {
            job_id: s.job_id.clone(),
            generation: s.generation,
            rank: s.rank,
        };
        if !self.table().seen.insert(key.clone()) {
            return;
        }
        let cuda = pb::Backend::try_from(s.backend) == Ok(pb::Backend::Cuda);
        if cuda && !self.has_free_gpu() {
            // The coordinator frees an ended attempt's GPUs at once; this daemon frees one when
            // the rank holding it has exited, up to the stop grace after its stop. A restart
            // placed in between waits for it rather than failing, which would be charged to
            // this worker.
            tracing::info!("{key} waits for a GPU still held by a stopping rank");
            let this = self.clone();
            tokio::spawn(async move {
                let deadline =
                    tokio::time::Instant::now() + this.config.stop_grace + GPU_WAIT_SLACK;
                loop {
                    // Created before the check: a GPU freed in between still wakes it.
                    let freed = this.gpu_freed.notified();
                    if this.has_free_gpu()
                        || tokio::time::timeout_at(deadline, freed).await.is_err()
                    {
                        break;
                    }
                }
                this.launch(key, s);
            });
            return;
        }
        self.launch(key, s);
    }

    fn has_free_gpu(&self) -> bool {
        let t = self.table();
        free_gpu(self.config.gpus.len() as u32, t.gpus.values().copied()).is_some()
    }

    /// Spawns the rank, or reports why it could not be started.
    fn launch(self: &Arc<Self>, key: RankId, s: pb::StartRank) {
        match self.spawn(&key, &s) {
            Ok(child) => {
                tracing::info!("started {key}");
                if let Some(pid) = child.id() {
                    self.table().running.insert(key.clone(), pid as i32);
                }
                let this = self.clone();
                tokio::spawn(async move { this.supervise(key, child).await });
            }
            Err(msg) => {
                tracing::error!("cannot start {key}: {msg}");
                self.report_exit(pb::RankExit {
                    job_id: key.job_id,
                    generation: key.generation,
                    rank: key.rank,
                    code: Some(127),
                    signal: None,
                    log_tail: format!("the worker could not start the rank: {msg}"),
                });
            }
        }
    }

    fn spawn(&self, key: &RankId, s: &pb::StartRank) -> Result<tokio::process::Child, String> {
        let dir = self
            .config
            .data_dir
            .join("ranks")
            .join(format!("{}-g{}-r{}", key.job_id, key.generation, key.rank));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let spec = dir.join("spec.toml");
        std::fs::write(&spec, &s.spec_toml)
            .map_err(|e| format!("writing {}: {e}", spec.display()))?;
        let launch = RankLaunch {
            job_id: s.job_id.clone(),
            generation: s.generation,
            rank: s.rank as usize,
            world_size: s.world_size as usize,
            coordinator: self.config.coordinator.clone(),
            spec,
            workdir: s.workdir.clone(),
            advertise_host: self.config.advertise_host.clone(),
            threads: self.config.threads_per_rank,
            collective_timeout_ms: self.config.collective_timeout.as_millis() as u64,
            upload_retry_ms: self.config.upload_retry.as_millis() as u64,
            credential: s.credential.clone(),
            ring_secret: s.ring_secret.clone(),
            tls_ca: self.config.tls_ca.clone(),
            data_roots: self.config.data_roots.clone(),
        };
        let launch_file = dir.join("launch.toml");
        launch.write(&launch_file).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.config.rank_program);
        // A CUDA rank sees exactly one GPU, its own; a CPU rank sees none.
        let gpu = match pb::Backend::try_from(s.backend) {
            Ok(pb::Backend::Cuda) => {
                let mut t = self.table();
                let total = self.config.gpus.len() as u32;
                let g = free_gpu(total, t.gpus.values().copied()).ok_or_else(|| {
                    format!(
                        "no free GPU: all {total} of this worker's GPUs are held by other ranks"
                    )
                })?;
                t.gpus.insert(key.clone(), g);
                Some(g)
            }
            Ok(pb::Backend::Cpu) => None,
            Ok(pb::Backend::Unspecified) | Err(_) => {
                return Err(format!(
                    "the coordinator did not say which backend the rank needs (backend {}); \
                     is it an older convoy?",
                    s.backend
                ));
            }
        };
        let device = gpu.and_then(|g| self.config.gpus.get(g as usize));
        cmd.env("CUDA_VISIBLE_DEVICES", device.map_or("", String::as_str));
        if let (Some(_), Some(path)) = (gpu, &self.cuda_library_path) {
            cmd.env("LD_LIBRARY_PATH", path);
        }
        cmd.arg(&launch_file)
            .current_dir(if s.workdir.is_empty() {
                dir.as_path()
            } else {
                std::path::Path::new(&s.workdir)
            })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let memory = self.config.rank_memory_limit.filter(|_| gpu.is_none());
        let file_size = self.config.rank_file_size_limit;
        // SAFETY: runs in the forked child before exec; prctl and setrlimit are
        // async-signal-safe system calls, and the closure touches no memory of the parent
        // beyond the two copied limits.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
                // Limits the rank and whatever it starts; setrlimit is async-signal-safe.
                use nix::sys::resource::{Resource, setrlimit};
                if let Some(bytes) = memory {
                    setrlimit(Resource::RLIMIT_AS, bytes, bytes)?;
                }
                if let Some(bytes) = file_size {
                    setrlimit(Resource::RLIMIT_FSIZE, bytes, bytes)?;
                }
                Ok(())
            });
        }
        cmd.spawn().map_err(|e| {
            self.table().gpus.remove(key);
            format!("{}: {e}", self.config.rank_program.display())
        })
    }

    async fn supervise(self: Arc<Self>, key: RankId, mut child: tokio::process::Child) {
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let readers: Vec<_> = [
            child
                .stdout
                .take()
                .map(|o| self.read_lines(&key, "stdout", o, tail.clone())),
            child
                .stderr
                .take()
                .map(|e| self.read_lines(&key, "stderr", e, tail.clone())),
        ]
        .into_iter()
        .flatten()
        .collect();
        let status = child.wait().await;
        for r in readers {
            let _ = r.await;
        }
        // Everything the rank printed is shipped before its exit is reported, if the
        // coordinator takes it in time; a coordinator that refuses lines (its records store
        // failed) must not keep the job "running" forever. Unshipped lines stay queued.
        let (done, shipped) = oneshot::channel();
        if self.logs.send(LogMsg::Flush(done)).await.is_ok()
            && tokio::time::timeout(FLUSH_WAIT, shipped).await.is_err()
        {
            tracing::warn!(
                "{key}: its last log lines were not accepted within {} s; reporting its exit \
                 anyway",
                FLUSH_WAIT.as_secs()
            );
        }
        let tail: Vec<String> = tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        let (code, signal) = match &status {
            Ok(s) => (s.code(), s.signal()),
            Err(_) => (None, Some(Signal::SIGKILL as i32)),
        };
        tracing::info!("{key} exited: code {code:?} signal {signal:?}");
        {
            let mut t = self.table();
            t.running.remove(&key);
            if t.gpus.remove(&key).is_some() {
                self.gpu_freed.notify_waiters();
            }
            if t.running.is_empty() {
                self.emptied.notify_waiters();
            }
        }
        self.report_exit(pb::RankExit {
            job_id: key.job_id,
            generation: key.generation,
            rank: key.rank,
            code,
            signal,
            log_tail: tail.join("\n"),
        });
    }

    fn read_lines(
        &self,
        key: &RankId,
        stream: &'static str,
        pipe: impl AsyncRead + Unpin + Send + 'static,
        tail: Arc<Mutex<VecDeque<String>>>,
    ) -> tokio::task::JoinHandle<()> {
        let logs = self.logs.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                // A rank that writes without newlines is read in pieces of a bounded size,
                // each shipped as a line: the daemon's memory does not follow the rank's.
                let mut piece = (&mut reader).take(MAX_LINE_READ);
                match piece.read_until(b'\n', &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&buf).trim_end().to_string();
                {
                    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(text.clone());
                }
                let line = pb::RankLog {
                    job_id: key.job_id.clone(),
                    generation: key.generation,
                    rank: key.rank,
                    stream: stream.into(),
                    text,
                    at_ms: now_ms(),
                };
                if logs.send(LogMsg::Line(line)).await.is_err() {
                    break;
                }
            }
        })
    }

    /// SIGTERM to the ranks of `job_id` up to `generation`, SIGKILL after the grace period.
    pub fn stop(self: &Arc<Self>, job_id: &str, generation: u64, reason: &str) {
        let targets: Vec<(RankId, i32)> = self
            .table()
            .running
            .iter()
            .filter(|(k, _)| k.job_id == job_id && k.generation <= generation)
            .map(|(k, p)| (k.clone(), *p))
            .collect();
        for (key, pgid) in targets {
            tracing::info!("stopping {key}: {reason}");
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
            let this = self.clone();
            let grace = self.config.stop_grace;
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                if this.table().running.get(&key) == Some(&pgid) {
                    tracing::warn!("{key} ignored SIGTERM for {grace:?}; sending SIGKILL");
                    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                }
            });
        }
    }

    /// Stops every rank (SIGTERM, then SIGKILL after the grace period) and waits until they
    /// are gone, for a daemon shutdown.
    pub async fn stop_all(self: &Arc<Self>) {
        let all: Vec<(RankId, i32)> = self
            .table()
            .running
            .iter()
            .map(|(k, p)| (k.clone(), *p))
            .collect();
        if all.is_empty() {
            return;
        }
        for (_, pgid) in &all {
            let _ = killpg(Pid::from_raw(*pgid), Signal::SIGTERM);
        }
        let gone = async {
            loop {
                let waiting = self.emptied.notified();
                if self.table().running.is_empty() {
                    return;
                }
                waiting.await;
            }
        };
        if tokio::time::timeout(self.config.stop_grace, gone)
            .await
            .is_err()
        {
            let left: Vec<i32> = self.table().running.values().copied().collect();
            for pgid in left {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::free_gpu;

    #[test]
    fn ranks_get_the_lowest_gpu_nobody_holds() {
        assert_eq!(free_gpu(4, [].into_iter()), Some(0));
        assert_eq!(free_gpu(4, [0, 1, 3].into_iter()), Some(2));
        assert_eq!(free_gpu(2, [1, 0].into_iter()), None);
        assert_eq!(free_gpu(0, [].into_iter()), None);
    }
}
