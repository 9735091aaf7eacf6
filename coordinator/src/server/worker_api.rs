//! `convoy.v1.WorkerApi`: what worker daemons and their ranks call.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use convoy_proto::v1 as pb;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::identity::Caller;
use crate::log::codec::RecordOp;
use crate::model::{JobId, RankExit, WorkerId};
use crate::server::auth;
use crate::server::checkpoints::Checkpoints;
use crate::server::checkpoints::DownloadStream;
use crate::server::convert;
use crate::server::handle::Handle;
use crate::server::limits::Limiters;
use crate::server::request::{RankKey, Request as LoopRequest};
use crate::state::ClusterState;

/// Log lines written (or replicated) together at most.
const LOG_BATCH: usize = 256;
/// The longest log line kept; a longer one is cut, saying how much was cut.
pub const MAX_LOG_LINE: usize = 16 << 10;

pub struct WorkerService {
    handle: Handle,
    checkpoints: Checkpoints,
    /// A registering worker must present a client certificate (see `AuthConfig`).
    require_cert: bool,
    limiters: Arc<Limiters>,
}

impl WorkerService {
    pub(crate) fn new(
        handle: Handle,
        checkpoints: Checkpoints,
        require_cert: bool,
        limiters: Arc<Limiters>,
    ) -> Self {
        WorkerService {
            handle,
            checkpoints,
            require_cert,
            limiters,
        }
    }
}

fn worker_id(text: &str) -> Result<crate::model::WorkerId, Status> {
    convert::worker_id(text)
        .ok_or_else(|| Status::invalid_argument(format!("{text:?} is not a worker id")))
}

fn rank_key(job_id: &str, generation: u64, rank: u32) -> Result<RankKey, Status> {
    Ok(RankKey {
        job: convert::job_id(job_id)?,
        generation,
        rank: rank as usize,
    })
}

#[tonic::async_trait]
impl pb::worker_api_server::WorkerApi for WorkerService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        match auth::caller(&request)? {
            Caller::Joiner | Caller::Anyone => {}
            other => {
                return Err(Status::permission_denied(format!(
                    "{} may not register a worker: workers register with the join token",
                    other.describe()
                )));
            }
        }
        // The TLS handshake verified any certificate presented against the cluster's CA.
        if self.require_cert && request.peer_certs().is_none_or(|c| c.is_empty()) {
            return Err(Status::permission_denied(
                "this cluster admits workers with a client certificate signed by its CA \
                 (the worker's --tls-cert and --tls-key)",
            ));
        }
        let r = request.into_inner();
        match convert::version_skew(convoy_service::VERSION, &r.version) {
            Err(msg) => return Err(Status::failed_precondition(msg)),
            Ok(Some(note)) => tracing::warn!("{}: {note}", r.name),
            Ok(None) => {}
        }
        let (id, credential) = self
            .handle
            .call(|reply| LoopRequest::Register {
                name: r.name,
                slots: r.cpu_slots,
                gpus: r.gpus,
                instance: r.instance,
                reply,
            })
            .await?
            .map_err(convert::status)?;
        Ok(Response::new(pb::RegisterResponse {
            worker_id: id.to_string(),
            heartbeat_interval_ms: self.handle.heartbeat_interval.as_millis() as u64,
            credential,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let worker = worker_id(&r.worker_id)?;
        caller.must_be_worker(worker)?;
        let running = r
            .running
            .iter()
            .map(|k| rank_key(&k.job_id, k.generation, k.rank))
            .collect::<Result<Vec<_>, _>>()?;
        self.handle
            .call(|reply| LoopRequest::Heartbeat {
                worker,
                running,
                reply,
            })
            .await?
            .map_err(convert::status)?;
        Ok(Response::new(pb::HeartbeatResponse {}))
    }

    type WatchAssignmentsStream =
        Pin<Box<dyn Stream<Item = Result<pb::Assignment, Status>> + Send>>;

    async fn watch_assignments(
        &self,
        request: Request<pb::WatchAssignmentsRequest>,
    ) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        let worker = worker_id(&request.get_ref().worker_id)?;
        auth::caller(&request)?.must_be_worker(worker)?;
        let (tx, rx) = mpsc::unbounded_channel();
        self.handle
            .call(|reply| LoopRequest::Watch {
                worker,
                assignments: tx,
                reply,
            })
            .await?
            .map_err(convert::status)?;
        let stopping = self.handle.stopping.clone();
        let stream = UnboundedReceiverStream::new(rx)
            .map(Ok)
            .take_while(move |_| !*stopping.borrow());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report_progress(
        &self,
        request: Request<pb::ProgressReport>,
    ) -> Result<Response<pb::Ack>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let key = rank_key(&r.job_id, r.generation, r.rank)?;
        caller.must_be_rank(key)?;
        let mut metrics = r
            .metrics
            .ok_or_else(|| Status::invalid_argument("a progress report without metrics"))?;
        metrics.generation = r.generation;
        self.handle
            .call(|reply| LoopRequest::Progress {
                key,
                metrics,
                reply,
            })
            .await?
            .map_err(convert::status)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn report_rank_exit(
        &self,
        request: Request<pb::RankExit>,
    ) -> Result<Response<pb::Ack>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let key = rank_key(&r.job_id, r.generation, r.rank)?;
        if let Some(worker) = caller.worker()? {
            self.placed_on(worker, key).await?;
        }
        let exit = match (r.code, r.signal) {
            (Some(0), _) => RankExit::Success,
            (Some(code), _) => RankExit::Failure {
                status: code,
                log_tail: r.log_tail,
            },
            // A signal is reported as 128 + signal, the shell's convention.
            (None, Some(sig)) => RankExit::Failure {
                status: 128 + sig,
                log_tail: format!("killed by signal {sig}. {}", r.log_tail),
            },
            (None, None) => {
                return Err(Status::invalid_argument(
                    "a rank exit with neither an exit code nor a signal",
                ));
            }
        };
        self.handle
            .call(|reply| LoopRequest::RankExit { key, exit, reply })
            .await?
            .map_err(convert::status)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn ship_logs(
        &self,
        request: Request<Streaming<pb::RankLog>>,
    ) -> Result<Response<pb::Ack>, Status> {
        let worker = auth::caller(&request)?.worker()?;
        let mut stream = request.into_inner();
        while let Some(first) = stream.message().await? {
            // What has already arrived goes as one batch: one commit for many lines when the
            // records are replicated.
            let mut batch = vec![first];
            while batch.len() < LOG_BATCH {
                match tokio::time::timeout(Duration::ZERO, stream.message()).await {
                    Ok(Ok(Some(line))) => batch.push(line),
                    Ok(Ok(None)) | Err(_) => break,
                    Ok(Err(e)) => return Err(e),
                }
            }
            let mut lines = Vec::with_capacity(batch.len());
            for line in batch {
                let job = convert::job_id(&line.job_id)?;
                // "convoy" is the coordinator's own stream (job events): a rank's output
                // never passes for it.
                if line.stream != "stdout" && line.stream != "stderr" {
                    return Err(Status::invalid_argument(format!(
                        "a log line on stream {:?}: ranks write stdout and stderr",
                        line.stream
                    )));
                }
                lines.push((job, line));
            }
            // Lines of jobs the cluster does not hold (never submitted, or deleted since)
            // would only fill the records store: they are dropped. A worker ships only the
            // output of ranks placed on it.
            let ranks: BTreeSet<RankKey> = lines
                .iter()
                .map(|(job, l)| RankKey {
                    job: *job,
                    generation: l.generation,
                    rank: l.rank as usize,
                })
                .collect();
            let (known, foreign) = self
                .handle
                .read_local(move |v| {
                    let known: BTreeSet<JobId> = ranks
                        .iter()
                        .map(|k| k.job)
                        .filter(|j| v.state.jobs.contains_key(j))
                        .collect();
                    let foreign = worker.and_then(|w| {
                        ranks
                            .iter()
                            .find(|k| known.contains(&k.job) && placed(v.state, **k) != Some(w))
                            .copied()
                    });
                    (known, foreign)
                })
                .await?;
            if let (Some(w), Some(k)) = (worker, foreign) {
                return Err(Status::permission_denied(format!(
                    "{w} may not ship the output of rank {} of {} attempt {}: it does not run it",
                    k.rank, k.job, k.generation
                )));
            }
            let mut lines: Vec<(JobId, pb::RankLog)> = lines
                .into_iter()
                .filter(|(job, _)| known.contains(job))
                .collect();
            // Beyond the worker's rate the rest of the batch is dropped, and its jobs' logs
            // say so (once per batch).
            if let Some(w) = worker {
                let allowed = self.limiters.log_lines(w, lines.len());
                let dropped = lines.split_off(allowed);
                let mut told = BTreeSet::new();
                for (job, l) in &dropped {
                    if told.insert((*job, l.generation)) {
                        self.handle.event(
                            *job,
                            l.generation,
                            format!(
                                "log lines dropped: {w} ships more than {} lines per second",
                                self.limiters.limits.log_lines_per_second
                            ),
                        );
                    }
                }
            }
            let ops: Vec<RecordOp> = lines
                .into_iter()
                .map(|(job, line)| {
                    let record = pb::LogLine {
                        rank: line.rank,
                        generation: line.generation,
                        stream: line.stream,
                        text: bounded(line.text),
                        at_ms: line.at_ms,
                    };
                    RecordOp::Log {
                        job,
                        line: record.encode_to_vec(),
                    }
                })
                .collect();
            if !ops.is_empty() {
                self.handle.append_records(ops).await?;
            }
        }
        Ok(Response::new(pb::Ack {}))
    }

    async fn rendezvous(
        &self,
        request: Request<pb::RendezvousRequest>,
    ) -> Result<Response<pb::RendezvousResponse>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let key = rank_key(&r.job_id, r.generation, r.rank)?;
        caller.must_be_rank(key)?;
        let published = self
            .handle
            .call(|reply| LoopRequest::Rendezvous {
                key,
                address: r.address,
                nccl_id: r.nccl_id,
                reply,
            })
            .await?
            .map_err(convert::status)?;
        Ok(Response::new(pb::RendezvousResponse {
            addresses: published.addresses,
            nccl_id: published.nccl_id,
        }))
    }

    async fn upload_checkpoint(
        &self,
        request: Request<Streaming<pb::CheckpointUpload>>,
    ) -> Result<Response<pb::UploadCheckpointResponse>, Status> {
        let rank = auth::caller(&request)?.rank()?;
        Ok(Response::new(
            self.checkpoints.upload(request.into_inner(), rank).await?,
        ))
    }

    type DownloadCheckpointStream = DownloadStream;

    async fn download_checkpoint(
        &self,
        request: Request<pb::DownloadCheckpointRequest>,
    ) -> Result<Response<Self::DownloadCheckpointStream>, Status> {
        if let Some(rank) = auth::caller(&request)?.rank()? {
            let want = convert::job_id(&request.get_ref().job_id)?;
            self.may_read(rank, want).await?;
        }
        Ok(Response::new(
            self.checkpoints.download(request.into_inner()).await?,
        ))
    }
}

impl WorkerService {
    /// Refuses unless rank `key` runs on `worker`.
    async fn placed_on(&self, worker: WorkerId, key: RankKey) -> Result<(), Status> {
        let at = self.handle.read(move |v| placed(v.state, key)).await?;
        if at == Some(worker) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "{worker} may not report on rank {} of {} attempt {}: it does not run it",
            key.rank, key.job, key.generation
        )))
    }

    /// Refuses unless `rank`, of a live attempt, may read `job`'s checkpoints: its own job's,
    /// or those of the job its `init_from` names (whose owner the submission was checked
    /// against).
    async fn may_read(&self, rank: RankKey, job: JobId) -> Result<(), Status> {
        let (live, from) = self
            .handle
            .read(move |v| {
                let j = v.state.jobs.get(&rank.job);
                let live = j
                    .and_then(|j| j.live_attempt())
                    .is_some_and(|a| a.generation == rank.generation);
                (live, j.and_then(|j| j.init_from_job()))
            })
            .await?;
        if !live {
            return Err(Status::permission_denied(format!(
                "rank {} of {} attempt {}: that attempt is not running, its credential reads                  nothing",
                rank.rank, rank.job, rank.generation
            )));
        }
        if job == rank.job || from == Some(job) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "rank {} of {} may not read the checkpoints of {job}",
            rank.rank, rank.job
        )))
    }
}

/// The worker running rank `key`, as the attempt placed it.
fn placed(state: &ClusterState, key: RankKey) -> Option<WorkerId> {
    state
        .jobs
        .get(&key.job)?
        .attempts
        .iter()
        .find(|a| a.generation == key.generation)?
        .placement
        .get(key.rank)
        .copied()
}

/// `text` cut to [`MAX_LOG_LINE`] bytes (at a character boundary), saying how much was cut.
fn bounded(mut text: String) -> String {
    if text.len() <= MAX_LOG_LINE {
        return text;
    }
    let mut end = MAX_LOG_LINE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text.len() - end;
    text.truncate(end);
    text.push_str(&format!(" … ({cut} more bytes cut)"));
    text
}
