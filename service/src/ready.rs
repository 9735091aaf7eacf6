//! The ready signal: how a process that starts a daemon (`convoy dev`, the benchmarks, the
//! integration tests) learns that it is ready and where to reach it, without parsing log
//! lines.
//!
//! A daemon given `--ready-file PATH` writes one JSON object ([`ReadySignal`]) there when it
//! is ready: the coordinator once it serves (with the address it listens on, which tells a
//! harness the port when it asked for port 0), a worker once the coordinator has accepted its
//! registration (with its worker id). The file is written under another name and renamed into
//! place, so a reader never sees half of it. Under systemd the same moment is also announced
//! with `READY=1` ([`notify_systemd`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// What a ready daemon says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadySignal {
    /// `coordinator` or `worker`.
    pub service: String,
    pub pid: u32,
    /// The coordinator's bound address (`host:port`); empty for a worker.
    #[serde(default)]
    pub listen: String,
    /// The id the coordinator gave a worker (`worker-3`); empty for a coordinator.
    #[serde(default)]
    pub worker_id: String,
}

impl ReadySignal {
    /// A coordinator of this process, serving at `listen`.
    pub fn coordinator(listen: String) -> ReadySignal {
        ReadySignal {
            service: "coordinator".into(),
            pid: std::process::id(),
            listen,
            worker_id: String::new(),
        }
    }

    /// A worker of this process, registered as `worker_id`.
    pub fn worker(worker_id: String) -> ReadySignal {
        ReadySignal {
            service: "worker".into(),
            pid: std::process::id(),
            listen: String::new(),
            worker_id,
        }
    }

    /// Writes the signal to `path` atomically (a temporary file in the same directory, then a
    /// rename).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, path)
    }

    /// The signal at `path`: `Ok(None)` while the daemon has not written it yet.
    pub fn read(path: &Path) -> std::io::Result<Option<ReadySignal>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// `READY=1` to systemd (a no-op outside a `Type=notify` unit).
pub fn notify_systemd() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
}

/// systemd's watchdog for a loop that must keep turning: [`Watchdog::pet`] from the loop sends
/// `WATCHDOG=1` at half the unit's `WatchdogSec=`, so a wedged loop stops the pings and
/// systemd restarts the service. Outside a unit with a watchdog it does nothing.
pub struct Watchdog {
    every: Option<std::time::Duration>,
    last: std::time::Instant,
}

impl Watchdog {
    /// Reads `WATCHDOG_USEC` (and `WATCHDOG_PID`) as systemd set them for this process.
    pub fn from_env() -> Watchdog {
        let mut usec = 0u64;
        let every = sd_notify::watchdog_enabled(false, &mut usec)
            .then(|| std::time::Duration::from_micros(usec / 2));
        Watchdog {
            every,
            last: std::time::Instant::now(),
        }
    }

    /// Pings systemd if half the watchdog interval has passed since the last ping.
    pub fn pet(&mut self) {
        if let Some(every) = self.every
            && self.last.elapsed() >= every
        {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            self.last = std::time::Instant::now();
        }
    }
}

/// `STATUS=…`, the line `systemctl status` shows (a no-op outside systemd).
pub fn status_systemd(status: &str) {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(status)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_round_trips_and_is_absent_until_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ready.json");
        assert_eq!(ReadySignal::read(&path).expect("readable"), None);
        let s = ReadySignal::coordinator("127.0.0.1:40000".into());
        s.write(&path).expect("written");
        assert_eq!(ReadySignal::read(&path).expect("readable"), Some(s));
        assert!(!dir.path().join("ready.json.tmp").exists());
    }
}
