//! The worker daemon: registers this machine's slots with the coordinator, runs the ranks it
//! is given as child processes (`convoy-rank`), ships their logs and reports their exits.
//!
//! [`run`] is the whole daemon; the `convoy-worker` binary only resolves its settings into a
//! [`WorkerConfig`]. Nothing a rank does can take the daemon down: ranks are separate
//! processes, and their crashes are just exits with a status to report. The daemon knows
//! nothing of training: the coordinator says which backend a rank needs, and the rank reads
//! its job's spec itself.

mod config;
mod error;
pub mod gpus;
mod logship;
mod nccl_link;
mod ranks;
mod session;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};

pub use config::{WorkerConfig, defaults};
pub use error::WorkerError;
use ranks::Supervisor;

/// Runs the daemon until `shutdown` resolves, then stops its ranks (SIGTERM, then SIGKILL
/// after the grace period).
pub async fn run(
    mut config: WorkerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    if config.name.trim().is_empty() {
        return Err(WorkerError::Config(
            "the worker name is empty: set --name or CONVOY_WORKER_NAME".into(),
        ));
    }
    if config.slots == 0 {
        return Err(WorkerError::Config(
            "slots = 0: a worker needs at least one slot".into(),
        ));
    }
    // Every rank would fail to start without it: say so now, once.
    if !config.rank_program.is_file() {
        return Err(WorkerError::Config(format!(
            "rank_program = {}: no such file (convoy-rank is built and installed beside \
             convoy-worker)",
            config.rank_program.display()
        )));
    }
    // Ranks run as the daemon's user: as root, a job could read any file of the machine.
    let root = nix::unistd::geteuid().is_root();
    if root && !config.allow_root_ranks {
        return Err(WorkerError::Config(
            "convoy-worker runs as root, so its ranks would too and a job could read any file \
             of this machine: run it as an unprivileged user (the systemd unit runs it as \
             convoy), or pass --allow-root-ranks"
                .into(),
        ));
    }
    if root {
        tracing::warn!("--allow-root-ranks: ranks run as root");
    }
    std::fs::create_dir_all(config.data_dir.join("ranks")).map_err(|e| WorkerError::Io {
        what: format!("creating {}", config.data_dir.display()),
        source: e,
    })?;
    // Ranks run in their job's directory: the paths the daemon hands them must be absolute.
    for path in [&mut config.data_dir, &mut config.rank_program] {
        *path = path.canonicalize().map_err(|e| WorkerError::Io {
            what: format!("resolving {}", path.display()),
            source: e,
        })?;
    }
    let channel = convoy_client::connect_lazy(&config.coordinator)?;
    let api = convoy_client::worker_api(channel.clone());
    // Distinguishes this process from an earlier daemon of the same name.
    let instance = format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    // CUDA ranks need libnccl under the name cudarc opens; fixed once here, for every rank.
    let cuda_library_path = match config.gpus.len() {
        0 => None,
        _ => {
            let search = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
            nccl_link::library_path(&search, &config.data_dir.join("lib")).map_err(|e| {
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
    let shipper = tokio::spawn(logship::run(log_rx, api.clone()));
    // systemd's watchdog (WatchdogSec= in the unit): pings as long as the runtime turns.
    let watchdog = tokio::spawn(async {
        let mut w = convoy_service::ready::Watchdog::from_env();
        loop {
            w.pet();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let reporter = tokio::spawn(session::report_exits(
        api.clone(),
        ranks.clone(),
        stopping.clone(),
    ));
    let sess = tokio::spawn(session::run(
        config.clone(),
        instance,
        channel,
        api,
        ranks.clone(),
        stopping,
    ));
    // systemd hears READY=1 once the daemon is set up, whether or not the coordinator is
    // reachable yet: a worker waits for its coordinator, and its unit must not fail for that.
    convoy_service::ready::notify_systemd();
    shutdown.await;
    tracing::info!("shutting down: stopping ranks");
    let _ = stop_tx.send(true);
    let _ = sess.await;
    ranks.stop_all().await;
    let _ = reporter.await;
    shipper.abort();
    watchdog.abort();
    Ok(())
}
