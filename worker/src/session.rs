//! The daemon's conversation with the coordinator: register, watch assignments, heartbeat,
//! and start over whenever the coordinator goes away — without touching running ranks, which
//! the coordinator reattaches when the daemon registers again with the same instance.

use std::sync::Arc;
use std::time::Duration;

use convoy_client::Channel;
use convoy_proto::v1 as pb;
use convoy_proto::v1::worker_api_client::WorkerApiClient;
use tokio::sync::watch;
use tonic::Code;

use crate::config::WorkerConfig;
use crate::ranks::Supervisor;

/// After losing the coordinator the daemon asks again this often, this many times, before
/// backing off: about the time a replicated coordinator takes to elect a new leader.
const QUICK_RETRY: Duration = Duration::from_millis(100);
const QUICK_TRIES: u32 = 20;

/// How long one unary call may take before the coordinator counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

async fn call<T>(
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::unavailable("no answer within 5 s")),
    }
}

/// The registration request, presenting the join token when the daemon has one.
fn register_request(
    config: &WorkerConfig,
    instance: &str,
    ranks: &Supervisor,
) -> Result<tonic::Request<pb::RegisterRequest>, String> {
    let mut req = tonic::Request::new(pb::RegisterRequest {
        name: config.name.clone(),
        cpu_slots: config.slots,
        gpus: config.gpus.len() as u32,
        version: convoy_service::VERSION.into(),
        running: ranks.running(),
        instance: instance.to_string(),
    });
    if let Some(token) = &config.join_token {
        let value = convoy_client::bearer(token).map_err(|e| e.to_string())?;
        req.metadata_mut().insert(
            "authorization",
            tonic::metadata::MetadataValue::try_from(value.as_bytes())
                .map_err(|e| format!("the join token: {e}"))?,
        );
    }
    Ok(req)
}

/// Registers, watches assignments and heartbeats, registering again whenever the
/// coordinator goes away. The credential each registration returns is presented by every
/// later call on `channel` (the log shipper's and exit reporter's included).
pub async fn run(
    config: Arc<WorkerConfig>,
    instance: String,
    channel: Channel,
    client: WorkerApiClient<Channel>,
    ranks: Arc<Supervisor>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    let mut failures = 0u32;
    let mut last_error = String::new();
    let mut announced = false;
    while !*stopping.borrow() {
        let mut c = client.clone();
        let registered = match register_request(&config, &instance, &ranks) {
            Ok(req) => call(c.register(req)).await,
            Err(msg) => Err(tonic::Status::invalid_argument(msg)),
        };
        let reg = match registered {
            Ok(r) => r,
            Err(s) => {
                let msg = match s.code() {
                    Code::AlreadyExists => format!(
                        "{} (retrying: the other daemon is declared lost after the heartbeat timeout)",
                        s.message()
                    ),
                    _ => format!(
                        "cannot register with {}: {}",
                        config.coordinator,
                        s.message()
                    ),
                };
                if msg != last_error {
                    tracing::warn!("{msg}");
                    last_error = msg;
                }
                // Quick tries first: a new leader is usually elected within a second, and the
                // sooner the daemon asks, the sooner its ranks are heard again. Then back off.
                failures += 1;
                let delay = if failures <= QUICK_TRIES {
                    QUICK_RETRY
                } else {
                    backoff
                };
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopping.changed() => {}
                }
                if failures > QUICK_TRIES {
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                continue;
            }
        };
        if !reg.credential.is_empty()
            && let Err(e) = channel.set_credential(&reg.credential)
        {
            tracing::warn!("the coordinator's credential for this worker: {e}");
        }
        backoff = Duration::from_millis(200);
        failures = 0;
        last_error.clear();
        tracing::info!(
            "registered with {} as {} ({} slots, {} GPUs)",
            config.coordinator,
            reg.worker_id,
            config.slots,
            config.gpus.len()
        );
        convoy_service::ready::status_systemd(&format!(
            "registered with {} as {}",
            config.coordinator, reg.worker_id
        ));
        if !announced {
            announced = true;
            announce(&config, &reg.worker_id);
        }
        let stream = call(c.watch_assignments(pb::WatchAssignmentsRequest {
            worker_id: reg.worker_id.clone(),
        }))
        .await;
        let mut stream = match stream {
            Ok(s) => s,
            Err(s) => {
                tracing::warn!("watching assignments: {}", s.message());
                continue;
            }
        };
        let mut beat =
            tokio::time::interval(Duration::from_millis(reg.heartbeat_interval_ms.max(50)));
        loop {
            tokio::select! {
                _ = stopping.changed() => return,
                msg = stream.message() => match msg {
                    Ok(Some(a)) => match a.kind {
                        Some(pb::assignment::Kind::Start(s)) => ranks.start(s),
                        Some(pb::assignment::Kind::Stop(s)) => {
                            ranks.stop(&s.job_id, s.generation, &s.reason)
                        }
                        None => {}
                    },
                    Ok(None) | Err(_) => {
                        tracing::warn!("lost the coordinator's assignment stream; reconnecting");
                        break;
                    }
                },
                _ = beat.tick() => {
                    let hb = call(c.heartbeat(pb::HeartbeatRequest {
                        worker_id: reg.worker_id.clone(),
                        running: ranks.running(),
                    }))
                    .await;
                    if let Err(s) = hb {
                        tracing::warn!("heartbeat: {}; registering again", s.message());
                        break;
                    }
                }
            }
        }
    }
}

/// Writes the ready signal (with the worker id) after the first registration, for whatever
/// started this daemon and waits for it to be usable.
fn announce(config: &WorkerConfig, worker_id: &str) {
    let Some(path) = &config.ready_file else {
        return;
    };
    if let Err(e) = convoy_service::ReadySignal::worker(worker_id.to_string()).write(path) {
        tracing::warn!("writing the ready file {}: {e}", path.display());
    }
}

/// Delivers rank exit reports, retrying while the coordinator is unreachable. A report the
/// coordinator rejects (its attempt already ended) is dropped: there is nothing to retry.
pub async fn report_exits(
    client: WorkerApiClient<Channel>,
    ranks: Arc<Supervisor>,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = ranks.exited.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stopping.changed() => return,
        }
        let mut undelivered = vec![];
        for exit in ranks.take_exits() {
            let mut c = client.clone();
            match call(c.report_rank_exit(exit.clone())).await {
                Ok(_) => {}
                Err(s)
                    if matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Internal) =>
                {
                    undelivered.push(exit)
                }
                Err(s) => tracing::info!(
                    "exit of {} generation {} rank {} not recorded: {}",
                    exit.job_id,
                    exit.generation,
                    exit.rank,
                    s.message()
                ),
            }
        }
        if !undelivered.is_empty() {
            ranks.return_exits(undelivered);
        }
    }
}
