//! The coordinator daemon: gRPC services in front of the [`event_loop`].
//!
//! [`run`] serves the client API (`convoy.v1.Convoy`), the worker API (`convoy.v1.WorkerApi`)
//! and the standard `grpc.health.v1.Health` on a listener it is given, until `shutdown`
//! resolves. Handlers convert protobuf to domain values ([`convert`]), send a request to the
//! loop and map its answer back; they never touch the state.

mod checkpoints;
mod client_api;
pub mod convert;
pub mod event_loop;
pub mod records;
pub mod rendezvous;
mod worker_api;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use convoy_proto::v1::convoy_server::ConvoyServer;
use convoy_proto::v1::worker_api_server::WorkerApiServer;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Status;

use crate::checkpoints::{CheckpointError, CheckpointStore};
use crate::coordinator::Coordinator;
use crate::error::{CoordinatorError, StoreError};
use crate::log::SledLog;
use crate::server::event_loop::{EventLoop, LoopConfig, Request, View};
use crate::server::records::Records;
use crate::state::ClusterConfig;

/// Everything the coordinator daemon needs besides its listener.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Holds the command log (`log/`), the logs and metrics store (`records/`) and the
    /// checkpoint store (`checkpoints/`).
    pub data_dir: PathBuf,
    /// Replicated settings; used only when the data directory is new (afterwards the stored
    /// state's own settings apply).
    pub cluster: ClusterConfig,
    /// Workers are told to heartbeat this often.
    pub heartbeat_interval: Duration,
    pub tick: Duration,
    pub log_lines_per_job: u64,
    pub metrics_per_job: u64,
    /// A snapshot is written every this many commands.
    pub snapshot_every: u64,
    /// The largest request accepted (a spec, a batch of log lines).
    pub max_message_bytes: usize,
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            cluster: ClusterConfig::default(),
            heartbeat_interval: Duration::from_secs(1),
            tick: Duration::from_millis(100),
            log_lines_per_job: 10_000,
            metrics_per_job: 100_000,
            snapshot_every: 4096,
            max_message_bytes: 4 << 20,
        }
    }
}

/// What both services share: the way into the loop, and the records store (read directly by
/// streams, which would otherwise hold the loop up).
#[derive(Clone)]
pub(crate) struct Handle {
    tx: std_mpsc::Sender<Request>,
    records: Arc<Records>,
    checkpoints: checkpoints::Checkpoints,
    heartbeat_interval: Duration,
    /// Becomes true when the server is shutting down; long streams end then.
    stopping: watch::Receiver<bool>,
}

impl Handle {
    /// Sends the request `make` builds around a reply channel and waits for the answer.
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T, Status> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))?;
        rx.await
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))
    }

    /// Runs `f` on the loop's current state.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&View<'_>) -> T + Send + 'static,
    ) -> Result<T, Status> {
        self.call(|reply| {
            Request::Read(Box::new(move |view| {
                let _ = reply.send(f(view));
            }))
        })
        .await
    }
}

/// Errors that stop the coordinator daemon.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Core(#[from] CoordinatorError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("checkpoint store: {0}")]
    Checkpoints(#[from] CheckpointError),
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the event loop thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the event loop stopped unexpectedly")]
    LoopPanicked,
}

/// Recovers the state from `config.data_dir` and serves on `listener` until `shutdown`
/// resolves; then stops accepting, finishes the loop's work and writes a snapshot. `ready` is
/// called once the state is recovered and requests are about to be served (for sd_notify).
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(),
) -> Result<(), ServerError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let log = SledLog::open(&config.data_dir.join("log"))?;
    let core = Coordinator::open(log, config.cluster.clone(), config.snapshot_every)?;
    let records = Arc::new(Records::open(
        &config.data_dir.join("records"),
        config.log_lines_per_job,
        config.metrics_per_job,
    )?);
    let ckpt_dir = config.data_dir.join("checkpoints");
    let store = sled::open(&ckpt_dir)
        .map_err(|e| CheckpointError::Storage {
            context: format!("open {}", ckpt_dir.display()),
            source: e,
        })
        .and_then(|db| CheckpointStore::open(&db))?;
    tracing::info!(
        "recovered {} jobs and {} workers from {}",
        core.state().jobs.len(),
        core.state().workers.len(),
        config.data_dir.display()
    );
    let (tx, rx) = std_mpsc::channel();
    let event_loop = EventLoop::new(
        core,
        records.clone(),
        LoopConfig {
            tick: config.tick,
            progress_log_interval: Duration::from_secs(1),
        },
    );
    // The server stops when asked, or when the loop ends on its own (a storage failure): a
    // coordinator that cannot log must not keep accepting work.
    let (loop_done, loop_ended) = oneshot::channel::<()>();
    let (stopping_tx, stopping) = watch::channel(false);
    let loop_thread = std::thread::Builder::new()
        .name("convoy-event-loop".into())
        .spawn(move || {
            let r = event_loop.run(rx);
            let _ = loop_done.send(());
            r
        })
        .map_err(ServerError::Thread)?;
    let handle = Handle {
        tx: tx.clone(),
        records,
        checkpoints: checkpoints::Checkpoints::new(store),
        heartbeat_interval: config.heartbeat_interval,
        stopping,
    };
    let shutdown = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = loop_ended => {}
        }
        // Followed streams end now rather than hold the graceful shutdown open.
        let _ = stopping_tx.send(true);
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ConvoyServer<client_api::ClientApi>>()
        .await;
    health_reporter
        .set_serving::<WorkerApiServer<worker_api::WorkerService>>()
        .await;
    let max = config.max_message_bytes;
    ready();
    let served = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(
            ConvoyServer::new(client_api::ClientApi::new(handle.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(
            WorkerApiServer::new(worker_api::WorkerService::new(handle))
                .max_decoding_message_size(max),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    let _ = tx.send(Request::Shutdown);
    let looped = loop_thread.join().map_err(|_| ServerError::LoopPanicked)?;
    served?;
    looped?;
    Ok(())
}
