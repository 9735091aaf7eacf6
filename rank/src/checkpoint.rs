//! A rank's side of checkpoints: uploading its part in the background, and downloading the
//! state to resume from (or to initialise from another job's).
//!
//! Every rank holds the same training state (data parallelism replicates it), so each uploads
//! only its share of the encoded bytes: rank `r` of `W` sends `[r·L/W, (r+1)·L/W)`. The
//! upload gets faster as the world grows, and the coordinator commits the checkpoint when the
//! last part arrives.

use std::collections::HashMap;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use convoy_client::checkpoint::{ReceiveError, receive};
use convoy_engine::state;
use convoy_engine::train::{StopToken, TrainState};
use convoy_proto::v1 as pb;
use convoy_service::RankLaunch;
use tonic::Code;
use xxhash_rust::xxh3::xxh3_64;

use crate::client::{RankClient, superseded};
use crate::error::RankError;

/// Bytes per upload message: a few MiB keeps each gRPC message well under the coordinator's
/// 4 MiB limit while amortising per-message costs.
const CHUNK: usize = 2 << 20;

/// A checkpoint to upload, with the metrics that retention may rank it by.
pub struct Outgoing {
    pub state: TrainState,
    pub metrics: HashMap<String, f64>,
}

/// The background uploader: at most one upload at a time, never a torn one.
pub struct Uploader {
    tx: Option<mpsc::SyncSender<Outgoing>>,
    thread: Option<JoinHandle<()>>,
}

impl Uploader {
    /// Uploads on a thread of its own; an upload the coordinator refuses because the attempt
    /// is over stops the training loop through `stop` (a superseded rank must not go on).
    pub fn spawn(
        client: Arc<RankClient>,
        launch: Arc<RankLaunch>,
        stop: StopToken,
    ) -> Result<Uploader, RankError> {
        // A rendezvous channel: `try_send` succeeds only while the thread waits for work.
        let (tx, rx) = mpsc::sync_channel::<Outgoing>(0);
        let thread = std::thread::Builder::new()
            .name("checkpoint-upload".into())
            .spawn(move || {
                for p in rx {
                    let step = p.state.step;
                    let started = Instant::now();
                    match upload(&client, &launch, &p) {
                        Ok(bytes) => println!(
                            "checkpoint step {step}: uploaded {:.1} MiB (part {} of {}) in {:.2} s",
                            bytes as f64 / (1 << 20) as f64,
                            launch.rank,
                            launch.world_size,
                            started.elapsed().as_secs_f64()
                        ),
                        Err(UploadError::Superseded(msg)) => {
                            eprintln!("checkpoint step {step} not saved: {msg}");
                            stop.stop(format!(
                                "the coordinator no longer runs this attempt ({msg})"
                            ));
                        }
                        Err(UploadError::Failed(msg)) => {
                            eprintln!("checkpoint step {step} not saved: {msg}; training goes on")
                        }
                    }
                }
            })
            .map_err(|e| RankError::Io {
                what: "starting the checkpoint upload thread".into(),
                source: e,
            })?;
        Ok(Uploader {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Starts uploading `p` unless the previous upload is still running; then this one is
    /// skipped (with a line saying so), so training never waits on the network.
    pub fn offer(&self, p: Outgoing) {
        let Some(tx) = &self.tx else { return };
        let step = p.state.step;
        if let Err(mpsc::TrySendError::Full(_)) = tx.try_send(p) {
            println!("checkpoint step {step} skipped: the previous upload is still running");
        }
    }

    /// The job's last checkpoint is not optional: waits for a running upload, uploads `p`, and
    /// waits for that too.
    pub fn finish(mut self, p: Option<Outgoing>) {
        if let (Some(tx), Some(p)) = (self.tx.take(), p) {
            let _ = tx.send(p);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum UploadError {
    /// The coordinator refused the part: this rank's attempt is no longer the live one.
    Superseded(String),
    Failed(String),
}

fn upload(client: &RankClient, launch: &RankLaunch, p: &Outgoing) -> Result<u64, UploadError> {
    let bytes = state::encode(&p.state);
    let total = bytes.len() as u64;
    let (w, r) = (launch.world_size as u64, launch.rank as u64);
    let start = (total * r / w) as usize;
    let end = (total * (r + 1) / w) as usize;
    let part = pb::CheckpointPart {
        job_id: launch.job_id.clone(),
        generation: launch.generation,
        step: p.state.step,
        part: launch.rank as u32,
        parts: launch.world_size as u32,
        total_len: total,
        offset: start as u64,
        len: (end - start) as u64,
        metrics: p.metrics.clone(),
        model: p.state.model.clone(),
    };
    let mut messages: Vec<pb::CheckpointUpload> = bytes[start..end]
        .chunks(CHUNK)
        .map(|c| pb::CheckpointUpload {
            part: None,
            checksum: xxh3_64(c),
            data: c.to_vec(),
        })
        .collect();
    if messages.is_empty() {
        messages.push(pb::CheckpointUpload::default());
    }
    messages[0].part = Some(part);
    client
        .call(|mut api| async move { api.upload_checkpoint(tokio_stream::iter(messages)).await })
        .map_err(|s| match superseded(&s) {
            true => UploadError::Superseded(s.message().to_string()),
            false => UploadError::Failed(format!("checkpoint upload: {}", s.message())),
        })?;
    Ok((end - start) as u64)
}

/// What a download found.
pub struct Downloaded {
    pub state: TrainState,
    pub step: u64,
    /// Size of the encoded state.
    pub bytes: u64,
    /// Newer checkpoints the coordinator skipped because they failed verification.
    pub skipped: Vec<String>,
}

/// Fetches `job`'s checkpoint at `step` (or its newest usable one), checking every chunk's
/// checksum and the total size before decoding. `None` when the job has no checkpoint.
/// Retries while the coordinator is unreachable, up to `timeout`.
pub fn download(
    client: &RankClient,
    job: &str,
    step: Option<u64>,
    timeout: Duration,
) -> Result<Option<Downloaded>, RankError> {
    let deadline = Instant::now() + timeout;
    loop {
        match try_download(client, job, step) {
            Err(DownloadError::Status(s)) if s.code() == Code::NotFound => return Ok(None),
            Err(DownloadError::Status(s))
                if s.code() == Code::Unavailable && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(DownloadError::Status(s)) => {
                return Err(RankError::Rpc {
                    what: format!("downloading the checkpoint of {job}"),
                    status: s.message().to_string(),
                });
            }
            Err(DownloadError::Bad(msg)) => {
                return Err(RankError::Config(format!(
                    "the checkpoint of {job} did not arrive intact: {msg}"
                )));
            }
            Ok(d) => return Ok(Some(d)),
        }
    }
}

enum DownloadError {
    Status(tonic::Status),
    Bad(String),
}

fn try_download(
    client: &RankClient,
    job: &str,
    step: Option<u64>,
) -> Result<Downloaded, DownloadError> {
    let received = client.call(|mut api| async move {
        let stream = api
            .download_checkpoint(pb::DownloadCheckpointRequest {
                job_id: job.to_string(),
                step,
            })
            .await
            .map_err(DownloadError::Status)?
            .into_inner();
        receive(stream).await.map_err(|e| match e {
            ReceiveError::Status(s) => DownloadError::Status(s),
            ReceiveError::Damaged(msg) => DownloadError::Bad(msg),
        })
    })?;
    let origin = std::path::PathBuf::from(format!("{job}@{}", received.info.step));
    let state =
        state::decode(&received.bytes, &origin).map_err(|e| DownloadError::Bad(e.to_string()))?;
    Ok(Downloaded {
        state,
        step: received.info.step,
        bytes: received.info.size_bytes,
        skipped: received.skipped,
    })
}
