//! The launch file: everything a rank process needs to know, written by the worker daemon
//! into the rank's directory and named as the rank's one argument (`convoy-rank
//! ranks/job-7-g2-r1/launch.toml`). One typed file instead of a dozen environment variables:
//! the daemon and the rank read and write the same struct, and a rank's configuration can
//! be read back after the fact. (`CUDA_VISIBLE_DEVICES` and `LD_LIBRARY_PATH` stay in the
//! environment: the CUDA driver and the dynamic loader read them, not convoy.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankLaunch {
    pub job_id: String,
    /// The attempt this rank belongs to; every report it makes carries it.
    pub generation: u64,
    pub rank: usize,
    pub world_size: usize,
    /// `http://host:port` of the coordinator.
    pub coordinator: String,
    /// The job's spec as submitted, in a file beside this one.
    pub spec: PathBuf,
    /// Relative spec paths resolve against this (empty: the rank's working directory).
    pub workdir: String,
    /// The host other ranks reach this rank's collective listener at.
    pub advertise_host: String,
    /// CPU threads (unset: the spec's `threads`, else every core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// How long the rank waits for its peers, and the longest a peer may be silent in a
    /// collective.
    pub collective_timeout_ms: u64,
    /// How long a checkpoint upload is retried while the coordinator is away or failing.
    #[serde(default = "default_upload_retry_ms")]
    pub upload_retry_ms: u64,
    /// What the rank presents to the coordinator: valid for this job, attempt and rank only.
    /// It lives in this file (mode 0600), not in the environment, which every child process
    /// of the rank would inherit.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential: String,
    /// The attempt's ring secret: ranks prove knowledge of it to each other.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ring_secret: String,
    /// The CA the coordinator's certificate is checked against (set: the rank connects over
    /// TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// Set: every file the job reads must lie under one of these directories (the worker's
    /// `--data-roots`, canonical).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_roots: Vec<PathBuf>,
}

/// Exit status of a rank that failed because of its job, not of where it ran (an invalid
/// spec, a missing or malformed data file, a non-finite loss, an unusable `init_from`): the
/// coordinator fails the job at once, without retrying it and without blaming the worker.
pub const EXIT_JOB_ERROR: u8 = 4;

/// Exit status of a rank that failed because a peer did (it closed the ring, went silent past
/// the collective timeout, or never joined): the attempt is retried like any infrastructure
/// failure, but this rank's worker is not blamed. The peer's own worker is: its rank's exit,
/// or the worker's loss, is what counts.
pub const EXIT_PEER_FAILED: u8 = 5;

/// One hour: a coordinator restart, a full disk being cleared, a network partition healing.
pub const DEFAULT_UPLOAD_RETRY_MS: u64 = 60 * 60 * 1000;

fn default_upload_retry_ms() -> u64 {
    DEFAULT_UPLOAD_RETRY_MS
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a rank launch file: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
}

impl RankLaunch {
    pub fn collective_timeout(&self) -> Duration {
        Duration::from_millis(self.collective_timeout_ms.max(1))
    }

    pub fn upload_retry(&self) -> Duration {
        Duration::from_millis(self.upload_retry_ms)
    }

    /// Writes the file readable by its owner only (it holds the rank's credential).
    pub fn write(&self, path: &Path) -> Result<(), LaunchError> {
        let text = toml::to_string(self).map_err(|e| LaunchError::Format {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        crate::secret_file::write(path, &text).map_err(|e| LaunchError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })
    }

    pub fn read(path: &Path) -> Result<RankLaunch, LaunchError> {
        let text = std::fs::read_to_string(path).map_err(|source| LaunchError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| LaunchError::Format {
            path: path.to_path_buf(),
            msg: e.message().trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_launch_file_round_trips_and_a_foreign_file_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("launch.toml");
        let launch = RankLaunch {
            job_id: "job-7".into(),
            generation: 2,
            rank: 1,
            world_size: 4,
            coordinator: "http://127.0.0.1:7070".into(),
            spec: dir.path().join("spec.toml"),
            workdir: "/data".into(),
            advertise_host: "10.0.0.2".into(),
            threads: None,
            collective_timeout_ms: 60_000,
            upload_retry_ms: 5_000,
            credential: "cvr.7.2.1.mac".into(),
            ring_secret: "ring".into(),
            tls_ca: Some("/etc/convoy/ca.pem".into()),
            data_roots: vec!["/data".into()],
        };
        launch.write(&path).expect("written");
        assert_eq!(RankLaunch::read(&path).expect("read"), launch);

        std::fs::write(&path, "name = \"a job spec\"\n").expect("write");
        let msg = RankLaunch::read(&path)
            .expect_err("not a launch file")
            .to_string();
        assert!(msg.contains("not a rank launch file"), "{msg}");
        assert_eq!(msg.lines().count(), 1, "{msg}");
    }
}
