//! The coordinator daemon: gRPC services in front of the [`event_loop`].
//!
//! [`run`] serves the client API (`convoy.v1.Convoy`), the worker API (`convoy.v1.WorkerApi`)
//! and the standard `grpc.health.v1.Health` on a listener it is given, until `shutdown`
//! resolves. Handlers convert protobuf to domain values ([`convert`]), send a request to the
//! loop and map its answer back; they never touch the state.

mod admission;
pub mod auth;
mod checkpoint_mirror;
mod checkpoints;
mod client_api;
mod clock;
pub mod convert;
pub mod event_loop;
mod fail_stop;
mod handle;
pub mod leadership;
pub mod limits;
pub mod records;
pub mod rendezvous;
mod replicas;
pub mod request;
mod settings;
mod worker_api;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use convoy_proto::v1::convoy_server::ConvoyServer;
use convoy_proto::v1::raft_peer_server::RaftPeerServer;
use convoy_proto::v1::replicas_server::ReplicasServer;
use convoy_proto::v1::worker_api_server::WorkerApiServer;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;

use crate::checkpoints::{CheckpointError, CheckpointStore};
use crate::error::{CoordinatorError, StoreError};
use crate::log::SledLog;
use crate::logged_state::LoggedState;
use crate::model::JobId;
use crate::replication::{AddressBook, Membership, Outbox, PeerService, RaftStorage};
use crate::server::checkpoint_mirror::MirrorTargets;
use crate::server::checkpoints::Checkpoints;
use crate::server::event_loop::{EventLoop, LoopConfig, ReplicaSetup};
use crate::server::handle::Handle;
use crate::server::leadership::Leadership;
use crate::server::records::Records;
use crate::server::request::Request;
use crate::state::ClusterConfig;
pub use fail_stop::FailStop;
pub use settings::{
    ClusterSettings, RateLimits, ReplicationConfig, ServerConfig, ServerTls, defaults, parse_peers,
    retention_days,
};
pub use worker_api::MAX_LOG_LINE;

/// How long in-flight requests may run on after a shutdown began.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1000);

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
    #[error("reading the listener's address: {0}")]
    Listener(#[source] std::io::Error),
    #[error("writing the ready file {path}: {source}")]
    ReadyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the event loop thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error(
        "{} holds {job}, but the command log has issued only {issued} job ids: the command log \
         was lost or replaced; refusing to start so that no job id is reused (restore the data \
         directory from a backup, or move {} aside to start an empty cluster)",
        store.display(), store.parent().unwrap_or(store).display()
    )]
    UnknownJobs {
        store: PathBuf,
        job: JobId,
        issued: u64,
    },
    /// A store failed while serving (see [`FailStop`]).
    #[error("{0}")]
    Failed(String),
    #[error("the event loop stopped unexpectedly")]
    LoopPanicked,
    #[error(
        "{} holds {what}, and this coordinator was started {how}: a data directory serves one \
         kind of coordinator (start it as it was, or give this one an empty data directory)",
        dir.display()
    )]
    WrongKind {
        dir: PathBuf,
        what: &'static str,
        how: &'static str,
    },
}

/// Recovers the state from `config.data_dir`, applies the replicated settings this start was
/// given, and serves on `listener` until `shutdown` resolves; then stops accepting, finishes
/// the loop's work and writes a snapshot. Once the state is recovered and requests are about
/// to be served it says so: `READY=1` to systemd, and the ready file when one is configured.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let fail_stop = config.fail_stop.clone();
    let records = Arc::new(Records::open(
        &config.data_dir.join("records"),
        config.log_lines_per_job,
        config.metrics_per_job,
        fail_stop.clone(),
    )?);
    let store = CheckpointStore::open_dir(&config.data_dir.join("checkpoints"))?;
    let loop_config = LoopConfig {
        tick: config.tick,
        progress_log_interval: Duration::from_secs(1),
        records_retention: config.records_retention,
    };
    let (tx, rx) = std_mpsc::channel();
    let mut peers = None;
    let event_loop = match &config.replication {
        None => {
            let raft_dir = config.data_dir.join("raft");
            if raft_dir.exists() {
                return Err(ServerError::WrongKind {
                    dir: raft_dir,
                    what: "a replicated coordinator's log",
                    how: "without --peers",
                });
            }
            let log = SledLog::open(&config.data_dir.join("log"))?;
            let mut core = LoggedState::open(log, ClusterConfig::default(), config.snapshot_every)?;
            settings::apply_cluster_settings(&mut core, &config.cluster)?;
            no_unknown_jobs(&core, &records, &store, &config.data_dir)?;
            tracing::info!(
                "recovered {} jobs and {} workers from {}",
                core.state().jobs.len(),
                core.state().workers.len(),
                config.data_dir.display()
            );
            EventLoop::new(core, records.clone(), loop_config)
        }
        Some(r) => {
            let (event_loop, service, members) =
                replicated(r, &config, &records, loop_config, &tx)?;
            peers = Some((service, members));
            event_loop.with_checkpoints(store.clone())
        }
    };
    let leadership = event_loop.leadership();
    let door = auth::Door {
        config: Arc::new(config.auth.clone()),
        credentials: event_loop.credentials(),
    };
    // The server stops when asked, or when the loop ends on its own (a storage failure): a
    // coordinator that cannot log must not keep accepting work.
    let (loop_done, loop_ended) = oneshot::channel::<()>();
    let (stopping_tx, stopping) = watch::channel(false);
    let loop_fail = fail_stop.clone();
    let loop_thread = std::thread::Builder::new()
        .name("convoy-event-loop".into())
        .spawn(move || {
            let r = event_loop.run(rx);
            match &r {
                Err(e @ StoreError::Removed { .. }) => loop_fail.stop(e.to_string()),
                Err(e) => loop_fail.fail("the command log", e),
                Ok(()) => {}
            }
            let _ = loop_done.send(());
            r
        })
        .map_err(ServerError::Thread)?;
    let handle = Handle {
        tx: tx.clone(),
        records,
        heartbeat_interval: config.heartbeat_interval,
        stopping,
        fail_stop: fail_stop.clone(),
        leadership: leadership.clone(),
        replicated: config.replication.is_some(),
    };
    // A replica copies the checkpoint parts it receives as leader to the others, and stores
    // the copies the leader sends it.
    let mirror = peers
        .as_ref()
        .and_then(|(_, m)| MirrorTargets::new(m.clone()));
    let replicated = peers.is_some();
    let checkpoints = Checkpoints::new(store.clone(), handle.clone(), mirror);
    if peers.is_some() {
        tokio::spawn(keep_checkpoints_whole(
            checkpoints.clone(),
            leadership.clone(),
        ));
    }
    let peers = peers.map(|(service, _)| {
        RaftPeerServer::new(service.with_parts(Arc::new(checkpoints.clone())))
            .max_decoding_message_size(config.max_message_bytes.max(2 << 20))
    });
    let drain = tx.clone();
    let mut began = stopping_tx.subscribe();
    let failed = fail_stop.clone();
    let shutdown = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = loop_ended => {}
            _ = failed.tripped() => {}
        }
        // Judge no one while stopping: workers cannot reach a stopping coordinator, and the
        // next start gives them a fresh timeout (a restart must not cost an attempt).
        let _ = drain.send(Request::Drain);
        // Followed streams end now rather than hold the graceful shutdown open.
        let _ = stopping_tx.send(true);
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(report_health(health_reporter, leadership.clone()));
    let max = config.max_message_bytes;
    announce(&listener, &config)?;
    // Only the serving member answers the client and worker APIs; the others refuse at the
    // door, naming the leader. Then the caller is authenticated (see `auth`).
    let view = leadership.clone();
    // Every member answers the replica API (each reports on itself), administrators only.
    let replicas_door = door.clone();
    let gate = move |api: auth::Api| {
        let view = view.clone();
        let door = door.clone();
        move |req: tonic::Request<()>| {
            {
                let l = view.borrow();
                if !l.serving {
                    return Err(l.refusal());
                }
            }
            door.admit(api, req)
        }
    };

    let limiters = Arc::new(limits::Limiters::new(config.rate_limits));
    let mut builder = tonic::transport::Server::builder();
    if let Some(t) = &config.tls {
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(&t.cert_pem, &t.key_pem),
        );
        if let Some(ca) = &t.client_ca_pem {
            tls = tls
                .client_ca_root(tonic::transport::Certificate::from_pem(ca))
                .client_auth_optional(true);
        }
        builder = builder.tls_config(tls)?;
    }
    let serve = builder
        .add_service(health_service)
        .add_optional_service(peers)
        .add_service(InterceptedService::new(
            ReplicasServer::new(replicas::ReplicasService {
                handle: handle.clone(),
                checkpoints: replicated.then(|| store.clone()),
            }),
            move |req| replicas_door.admit(auth::Api::Replicas, req),
        ))
        .add_service(InterceptedService::new(
            ConvoyServer::new(client_api::ClientApi::new(
                handle.clone(),
                checkpoints.clone(),
                limiters.clone(),
            ))
            .max_decoding_message_size(max),
            gate(auth::Api::Client),
        ))
        .add_service(InterceptedService::new(
            WorkerApiServer::new(worker_api::WorkerService::new(
                handle,
                checkpoints,
                config.auth.require_worker_cert,
                limiters,
            ))
            .max_decoding_message_size(max),
            gate(auth::Api::Worker),
        ))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown);
    // In-flight requests get a moment to finish once stopping began; a long upload is cut
    // (its rank sends it again to the next coordinator).
    let served = tokio::select! {
        r = serve => r,
        _ = async {
            let _ = began.wait_for(|stopping| *stopping).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!(
                "requests still in flight {} ms after the shutdown began are cut",
                SHUTDOWN_GRACE.as_millis()
            );
            Ok(())
        }
    };
    let _ = tx.send(Request::Shutdown);
    let looped = loop_thread.join().map_err(|_| ServerError::LoopPanicked)?;
    if let Some(failure) = fail_stop.failure() {
        return Err(ServerError::Failed(failure));
    }
    served?;
    looped?;
    Ok(())
}

/// Sets up a member of a replicated coordinator: its Raft storage in `data_dir/raft`, the
/// peer transport, and the peer service that feeds peers' messages to the loop.
fn replicated(
    r: &ReplicationConfig,
    config: &ServerConfig,
    records: &Arc<Records>,
    loop_config: LoopConfig,
    tx: &std_mpsc::Sender<Request>,
) -> Result<(EventLoop, PeerService, Arc<Membership>), ServerError> {
    let single_log = config.data_dir.join("log");
    if single_log.exists() {
        return Err(ServerError::WrongKind {
            dir: single_log,
            what: "a single coordinator's command log",
            how: "with --peers",
        });
    }
    let raft_dir = config.data_dir.join("raft");
    let db = sled::Config::new()
        .path(&raft_dir)
        .open()
        .map_err(StoreError::sled(format!("open {}", raft_dir.display())))?;
    let storage = RaftStorage::open(&db).map_err(|e| StoreError::Raft(e.to_string()))?;
    let members = Arc::new(Membership::new(
        r.cluster_id.clone(),
        r.secret.clone(),
        r.node_id,
        storage.incarnation(),
        AddressBook::founding(&r.members),
    ));
    let (inbox, mut from_peers) = tokio::sync::mpsc::channel(1024);
    let outbox = Outbox::start(members.clone()).reporting_to(inbox.clone());
    let to_loop = tx.clone();
    tokio::spawn(async move {
        while let Some(m) = from_peers.recv().await {
            if to_loop.send(Request::Peer(m)).is_err() {
                break;
            }
        }
    });
    let event_loop = EventLoop::replicated(
        ReplicaSetup {
            membership: members.clone(),
            storage,
            outbox,
            join: r.join,
            snapshot_every: config.snapshot_every,
            settings: config.cluster.clone(),
        },
        ClusterConfig::default(),
        records.clone(),
        loop_config,
    )?;
    tracing::info!(
        "member {} of cluster {:?}: {}",
        r.node_id,
        r.cluster_id,
        members.book().canonical()
    );
    Ok((
        event_loop,
        PeerService::new(members.clone(), inbox),
        members,
    ))
}

/// How often a replica compares its checkpoints with its peers'.
const REPAIR_EVERY: Duration = Duration::from_secs(10);

/// Keeps this replica's copy of every committed checkpoint whole: at start, whenever its
/// role changes (a new leader must hold what it will serve) and every [`REPAIR_EVERY`], it
/// fetches from the others the checkpoints it lacks or holds damaged (see
/// `Checkpoints::repair`). Ends when the replica stops.
async fn keep_checkpoints_whole(
    checkpoints: Checkpoints,
    mut leadership: watch::Receiver<Leadership>,
) {
    loop {
        match checkpoints.repair(None).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!("fetched {n} checkpoint(s) this replica lacked or held damaged")
            }
            Err(e) => tracing::warn!("repairing the checkpoint store: {}", e.message()),
        }
        tokio::select! {
            _ = tokio::time::sleep(REPAIR_EVERY) => {}
            changed = leadership.changed() => if changed.is_err() {
                return;
            }
        }
    }
}

/// `grpc.health.v1` says which member serves, so a load balancer can route to the leader.
async fn report_health(
    reporter: tonic_health::server::HealthReporter,
    mut leadership: watch::Receiver<Leadership>,
) {
    let mut reported = None;
    loop {
        let serving = leadership.borrow_and_update().serving;
        if reported != Some(serving) {
            reported = Some(serving);
            let status = if serving {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            for name in [
                <ConvoyServer<client_api::ClientApi> as tonic::server::NamedService>::NAME,
                <WorkerApiServer<worker_api::WorkerService> as tonic::server::NamedService>::NAME,
                "",
            ] {
                reporter.set_service_status(name, status).await;
            }
        }
        if leadership.changed().await.is_err() {
            return;
        }
    }
}

/// Refuses to start when a store holds a job the command log never issued: the log (with its
/// high-water mark) was lost or replaced, and serving would hand that job's id out again and
/// mix a new job with the old one's checkpoints and logs.
fn no_unknown_jobs(
    core: &LoggedState<SledLog>,
    records: &Records,
    store: &CheckpointStore,
    data_dir: &std::path::Path,
) -> Result<(), ServerError> {
    let issued = core.state().jobs_issued();
    let found = [
        ("records", records.newest_job()),
        ("checkpoints", store.newest_job()?),
    ];
    for (name, newest) in found {
        if let Some(job) = newest.filter(|j| j.0 > issued) {
            return Err(ServerError::UnknownJobs {
                store: data_dir.join(name),
                job,
                issued,
            });
        }
    }
    Ok(())
}

/// Says that the coordinator serves: a line for people, `READY=1` for systemd, and the ready
/// file (with the bound address, which is how a harness that asked for port 0 learns it).
fn announce(listener: &TcpListener, config: &ServerConfig) -> Result<(), ServerError> {
    let addr = listener.local_addr().map_err(ServerError::Listener)?;
    tracing::info!("listening on {addr}");
    println!("listening on {addr}");
    convoy_service::ready::notify_systemd();
    if let Some(path) = &config.ready_file {
        convoy_service::ReadySignal::coordinator(addr.to_string())
            .write(path)
            .map_err(|source| ServerError::ReadyFile {
                path: path.clone(),
                source,
            })?;
    }
    Ok(())
}
