//! Starting convoy's daemons as real processes and knowing when they are ready, written once
//! for everything that does it: `convoy dev`, the cluster benchmarks and the integration
//! tests.
//!
//! Each daemon is started with `--ready-file` and waited for until it writes its
//! [`ReadySignal`] there (the coordinator once it serves, with the address it bound; a worker
//! once the coordinator accepted its registration, with its id), until it exits, or until a
//! bound. Its stdout and stderr go to one log file, appended to across restarts, whose path
//! every error names. A [`Daemon`] that is dropped is killed, so a failed test or an early
//! error leaves no process behind.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use convoy_service::ReadySignal;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The binaries a cluster needs, which `cargo build` puts side by side.
pub const BINARIES: [&str; 3] = ["convoy-coordinator", "convoy-worker", "convoy-rank"];

/// Variables of this process that daemons it starts keep: where the machine's CUDA headers
/// and compiled-kernel cache are, which their ranks read. Every other `CONVOY_*` variable is a
/// daemon setting (`CONVOY_CONFIG`, `CONVOY_DATA_DIR`, …): a harness passes what it wants as
/// flags, and one exported in the caller's shell must not reach into `convoy dev` or a test.
const KEPT_CONVOY_VARS: [&str; 2] = ["CONVOY_KERNEL_CACHE", "CONVOY_CUDA_INCLUDE"];

/// Kept too: the settings of the emulated GPU (`CONVOY_EMU_DEVICES`, `CONVOY_EMU_STATS`, …;
/// emu/README.md), read by the stand-in libcuda that the emulated GPU test pass puts on the
/// library path, in the worker (which counts its GPUs) and in its ranks.
const KEPT_CONVOY_PREFIX: &str = "CONVOY_EMU_";

/// How long a daemon may take to become ready before the harness gives up on it: far longer
/// than a healthy start on a loaded machine, short enough that a broken one fails a run.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{} not found: build the binaries first (`cargo build`, or `cargo build --release`)", path.display())]
    MissingBinary { path: PathBuf },
    #[error("starting {name}: {source}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited ({status}) before it was ready; see {}", log.display())]
    Exited {
        name: String,
        status: ExitStatus,
        log: PathBuf,
    },
    #[error("{name} was not ready within {timeout:?}; see {}", log.display())]
    NotReady {
        name: String,
        timeout: Duration,
        log: PathBuf,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where the binaries are and where the daemons' logs and ready files go.
#[derive(Clone, Debug)]
pub struct Harness {
    bin_dir: PathBuf,
    run_dir: PathBuf,
}

impl Harness {
    /// Binaries from `bin_dir`, logs and ready files in `run_dir` (created).
    pub fn new(bin_dir: &Path, run_dir: &Path) -> Result<Harness, HarnessError> {
        std::fs::create_dir_all(run_dir).map_err(|source| HarnessError::Io {
            what: format!("creating {}", run_dir.display()),
            source,
        })?;
        Ok(Harness {
            bin_dir: bin_dir.to_path_buf(),
            run_dir: run_dir.to_path_buf(),
        })
    }

    /// The log file of the daemon called `name`.
    pub fn log(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.log"))
    }

    /// Starts `convoy-coordinator` with `args` (its flags: `--data-dir`, `--listen`, …) and
    /// waits until it serves. Its address is [`Daemon::url`].
    pub fn coordinator(&self, name: &str, args: &[String]) -> Result<Daemon, HarnessError> {
        let mut d = self.spawn("convoy-coordinator", name, args)?;
        d.wait_ready(READY_TIMEOUT)?;
        Ok(d)
    }

    /// Starts `convoy-worker` with `args` without waiting; [`Daemon::wait_ready`] waits
    /// until the coordinator has accepted it.
    pub fn spawn_worker(&self, name: &str, args: &[String]) -> Result<Daemon, HarnessError> {
        self.spawn("convoy-worker", name, args)
    }

    /// Checks that every binary a cluster needs is in the binary directory, so a missing one
    /// is named before anything starts.
    pub fn check_binaries(&self) -> Result<(), HarnessError> {
        for b in BINARIES {
            let path = self.bin_dir.join(b);
            if !path.exists() {
                return Err(HarnessError::MissingBinary { path });
            }
        }
        Ok(())
    }

    /// Starts `program` (one of [`BINARIES`]) as the daemon `name`.
    fn spawn(&self, program: &str, name: &str, args: &[String]) -> Result<Daemon, HarnessError> {
        let path = self.bin_dir.join(program);
        if !path.exists() {
            return Err(HarnessError::MissingBinary { path });
        }
        let ready_file = self.run_dir.join(format!("{name}.ready"));
        // A signal left by an earlier run of this daemon (a restart) says nothing now.
        match std::fs::remove_file(&ready_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(HarnessError::Io {
                    what: format!("removing {}", ready_file.display()),
                    source,
                });
            }
        }
        let log = self.log(name);
        let open = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|source| HarnessError::Io {
                    what: format!("opening {}", log.display()),
                    source,
                })
        };
        let mut command = Command::new(&path);
        for (var, _) in std::env::vars_os() {
            let name = var.to_string_lossy();
            if name.starts_with("CONVOY_")
                && !name.starts_with(KEPT_CONVOY_PREFIX)
                && !KEPT_CONVOY_VARS.contains(&name.as_ref())
            {
                command.env_remove(&var);
            }
        }
        let child = command
            .args(args)
            .arg("--ready-file")
            .arg(&ready_file)
            .stdin(Stdio::null())
            .stdout(open()?)
            .stderr(open()?)
            // Its own process group: a Ctrl-C meant for the harness's owner reaches only the
            // owner, which then stops the daemons in order.
            .process_group(0)
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                name: name.to_string(),
                source,
            })?;
        Ok(Daemon {
            name: name.to_string(),
            child,
            ready_file,
            log,
            ready: None,
        })
    }
}

/// A daemon process started by the [`Harness`]; killed when dropped.
pub struct Daemon {
    name: String,
    child: Child,
    ready_file: PathBuf,
    log: PathBuf,
    ready: Option<ReadySignal>,
}

impl Daemon {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The coordinator's address (`http://host:port`), once it is ready.
    pub fn url(&self) -> Option<String> {
        self.ready
            .as_ref()
            .filter(|r| !r.listen.is_empty())
            .map(|r| convoy_client::url(&r.listen))
    }

    /// Waits until the daemon writes its ready signal; fails when it exits first or takes
    /// longer than `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<&ReadySignal, HarnessError> {
        let deadline = Instant::now() + timeout;
        while self.poll_ready()?.is_none() {
            if Instant::now() > deadline {
                return Err(HarnessError::NotReady {
                    name: self.name.clone(),
                    timeout,
                    log: self.log.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.ready.as_ref().ok_or_else(|| HarnessError::NotReady {
            name: self.name.clone(),
            timeout,
            log: self.log.clone(),
        })
    }

    /// Looks once, without waiting: the ready signal once written, `None` before, an error
    /// once the daemon has exited without writing it. For callers that wait their own way
    /// (an async loop that also watches for Ctrl-C).
    pub fn poll_ready(&mut self) -> Result<Option<&ReadySignal>, HarnessError> {
        if self.ready.is_none() {
            self.ready =
                ReadySignal::read(&self.ready_file).map_err(|source| HarnessError::Io {
                    what: format!("reading {}", self.ready_file.display()),
                    source,
                })?;
        }
        if self.ready.is_some() {
            return Ok(self.ready.as_ref());
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(HarnessError::Exited {
                name: self.name.clone(),
                status,
                log: self.log.clone(),
            });
        }
        Ok(None)
    }

    /// Whether the process has exited (and reaped).
    /// The exit status, once the process has ended (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`. True when it stopped in time.
    pub fn stop(&mut self, grace: Duration) -> bool {
        if self.exited().is_some() {
            return true;
        }
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// SIGKILL, no shutdown of any kind, and waits for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether this process runs as root: a worker it starts then needs `--allow-root-ranks`
/// (it refuses to run ranks as root otherwise). Read from `/proc/self`, owned by the
/// process's user.
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The directory of the binary running now (`convoy dev` starts the daemons beside itself).
pub fn bin_dir_of_current_exe() -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe().map_err(|source| HarnessError::Io {
        what: "locating this binary".into(),
        source,
    })?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| HarnessError::Io {
            what: format!("{} has no directory", exe.display()),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
}
