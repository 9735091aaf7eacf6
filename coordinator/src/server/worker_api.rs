//! `convoy.v1.WorkerApi`: what worker daemons and their ranks call.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::time::Duration;

use convoy_proto::v1 as pb;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::log::codec::RecordOp;
use crate::model::{JobId, RankExit};
use crate::server::checkpoints::Checkpoints;
use crate::server::checkpoints::DownloadStream;
use crate::server::convert;
use crate::server::handle::Handle;
use crate::server::request::{RankKey, Request as LoopRequest};

/// Log lines written (or replicated) together at most.
const LOG_BATCH: usize = 256;
/// The longest log line kept; a longer one is cut, saying how much was cut.
pub const MAX_LOG_LINE: usize = 16 << 10;

pub struct WorkerService {
    handle: Handle,
    checkpoints: Checkpoints,
}

impl WorkerService {
    pub(crate) fn new(handle: Handle, checkpoints: Checkpoints) -> Self {
        WorkerService {
            handle,
            checkpoints,
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
        let r = request.into_inner();
        match convert::version_skew(convoy_service::VERSION, &r.version) {
            Err(msg) => return Err(Status::failed_precondition(msg)),
            Ok(Some(note)) => tracing::warn!("{}: {note}", r.name),
            Ok(None) => {}
        }
        let id = self
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
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = request.into_inner();
        let worker = worker_id(&r.worker_id)?;
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
        let worker = worker_id(&request.into_inner().worker_id)?;
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
        let r = request.into_inner();
        let key = rank_key(&r.job_id, r.generation, r.rank)?;
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
        let r = request.into_inner();
        let key = rank_key(&r.job_id, r.generation, r.rank)?;
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
            // would only fill the records store: they are dropped.
            let jobs: BTreeSet<JobId> = lines.iter().map(|(j, _)| *j).collect();
            let known: BTreeSet<JobId> = self
                .handle
                .read_local(move |v| {
                    jobs.into_iter()
                        .filter(|j| v.state.jobs.contains_key(j))
                        .collect()
                })
                .await?;
            let ops: Vec<RecordOp> = lines
                .into_iter()
                .filter(|(job, _)| known.contains(job))
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
        let r = request.into_inner();
        let key = rank_key(&r.job_id, r.generation, r.rank)?;
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
        Ok(Response::new(
            self.checkpoints.upload(request.into_inner()).await?,
        ))
    }

    type DownloadCheckpointStream = DownloadStream;

    async fn download_checkpoint(
        &self,
        request: Request<pb::DownloadCheckpointRequest>,
    ) -> Result<Response<Self::DownloadCheckpointStream>, Status> {
        Ok(Response::new(
            self.checkpoints.download(request.into_inner()).await?,
        ))
    }
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
