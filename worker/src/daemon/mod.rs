//! The worker daemon: registers this machine's slots with the coordinator, runs the ranks it
//! is given as child processes, ships their logs and reports their exits.
//!
//! [`run`] is the whole daemon; the `convoy-worker` binary only parses flags into a
//! [`WorkerConfig`]. Nothing a rank does can take the daemon down: ranks are separate
//! processes, and their crashes are just exits with a status to report.

mod logship;
mod nccl;
mod ranks;
mod session;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use convoy_proto::v1::worker_api_client::WorkerApiClient;
use tokio::sync::{mpsc, watch};

use crate::error::WorkerError;
use ranks::Supervisor;

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// `http://host:port` of the coordinator.
    pub coordinator: String,
    /// Unique in the cluster; normally the host name.
    pub name: String,
    /// Ranks this worker runs at once.
    pub slots: u32,
    pub gpus: u32,
    /// Rank working files (each rank's spec) go under `ranks/` here.
    pub data_dir: PathBuf,
    /// The address other machines reach this machine's ranks at.
    pub advertise_host: String,
    /// Between SIGTERM and SIGKILL when ranks are stopped.
    pub stop_grace: Duration,
    /// The program and arguments that run one rank (normally `convoy-worker rank`).
    pub rank_program: PathBuf,
    pub rank_args: Vec<String>,
    /// CPU threads per rank (default: the spec's `threads`, else all cores).
    pub threads_per_rank: Option<usize>,
    /// How long ranks wait for peers, and the longest a peer may be silent in a collective.
    pub collective_timeout: Duration,
}

/// GPUs this worker advertises: those the CUDA driver reports, none when no driver can be
/// loaded (a CPU machine), so the scheduler never places a CUDA rank where it cannot run.
pub fn detect_gpus() -> u32 {
    convoy_kernels::cuda::device_count() as u32
}

/// Runs the daemon until `shutdown` resolves, then stops its ranks (SIGTERM, then SIGKILL
/// after the grace period). `ready` is called once the daemon is set up (for sd_notify).
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(),
) -> Result<(), WorkerError> {
    if config.name.trim().is_empty() {
        return Err(WorkerError::Config("the worker name is empty".into()));
    }
    if config.slots == 0 {
        return Err(WorkerError::Config(
            "slots = 0: a worker needs at least one slot".into(),
        ));
    }
    std::fs::create_dir_all(config.data_dir.join("ranks")).map_err(|e| WorkerError::Io {
        what: format!("creating {}", config.data_dir.display()),
        source: e,
    })?;
    let endpoint = tonic::transport::Endpoint::from_shared(config.coordinator.clone())
        .map_err(|e| {
            WorkerError::Config(format!("coordinator address {:?}: {e}", config.coordinator))
        })?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    let client = WorkerApiClient::new(endpoint.connect_lazy());
    // Distinguishes this process from an earlier daemon of the same name.
    let instance = format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    // CUDA ranks need libnccl under the name cudarc opens; fixed once here, for every rank.
    let cuda_library_path = match config.gpus {
        0 => None,
        _ => {
            let search = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
            nccl::library_path(&search, &config.data_dir.join("lib")).map_err(|e| {
                WorkerError::Io {
                    what: "linking libnccl.so for the CUDA ranks".into(),
                    source: e,
                }
            })?
        }
    };
    let config = Arc::new(config);
    let (log_tx, log_rx) = mpsc::channel(4096);
    let ranks = Supervisor::new(config.clone(), log_tx, cuda_library_path);
    let (stop_tx, stopping) = watch::channel(false);
    let shipper = tokio::spawn(logship::run(log_rx, client.clone()));
    let reporter = tokio::spawn(session::report_exits(
        client.clone(),
        ranks.clone(),
        stopping.clone(),
    ));
    let sess = tokio::spawn(session::run(
        config.clone(),
        instance,
        client,
        ranks.clone(),
        stopping,
    ));
    ready();
    shutdown.await;
    tracing::info!("shutting down: stopping ranks");
    let _ = stop_tx.send(true);
    let _ = sess.await;
    ranks.stop_all().await;
    let _ = reporter.await;
    shipper.abort();
    Ok(())
}
