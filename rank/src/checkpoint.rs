//! A rank's side of checkpoints: uploading its part in the background, and downloading the
//! state to resume from (or to initialise from another job's).
//!
//! Every rank holds the same training state (data parallelism replicates it), so each uploads
//! only its share of the encoded bytes: rank `r` of `W` sends `[r·L/W, (r+1)·L/W)`. The
//! upload gets faster as the world grows, and the coordinator commits the checkpoint when the
//! last part arrives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// The background uploader: at most one upload at a time, never a torn one. An upload that
/// fails for a reason that may pass (the coordinator restarting, away, or out of disk) is
/// retried with backoff for the launch's `upload_retry`.
pub struct Uploader {
    tx: Option<mpsc::SyncSender<(Outgoing, bool)>>,
    /// Set when the final checkpoint is handed over: an older one still being retried gives
    /// way to it.
    finishing: Arc<AtomicBool>,
    /// Returns what became of the final checkpoint (`None` if none was handed over).
    thread: Option<JoinHandle<Option<Result<u64, String>>>>,
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
        let (tx, rx) = mpsc::sync_channel::<(Outgoing, bool)>(0);
        let finishing = Arc::new(AtomicBool::new(false));
        let superseded_by_final = finishing.clone();
        let thread = std::thread::Builder::new()
            .name("checkpoint-upload".into())
            .spawn(move || {
                let mut last = None;
                for (p, is_final) in rx {
                    let step = p.state.step;
                    let started = Instant::now();
                    let give_up = || !is_final && superseded_by_final.load(Ordering::Relaxed);
                    let result = match upload_with_retry(&client, &launch, &p, &stop, &give_up) {
                        Ok(bytes) => {
                            println!(
                                "checkpoint step {step}: uploaded {:.1} MiB (part {} of {}) in {:.2} s",
                                bytes as f64 / (1 << 20) as f64,
                                launch.rank,
                                launch.world_size,
                                started.elapsed().as_secs_f64()
                            );
                            Ok(bytes)
                        }
                        Err(UploadError::Superseded(msg)) => {
                            eprintln!("checkpoint step {step} not saved: {msg}");
                            stop.stop(format!(
                                "the coordinator no longer runs this attempt ({msg})"
                            ));
                            Err(msg)
                        }
                        Err(UploadError::Rejected(msg) | UploadError::Unavailable(msg)) => {
                            if !is_final {
                                eprintln!("checkpoint step {step} not saved: {msg}; training goes on");
                            }
                            Err(msg)
                        }
                    };
                    if is_final {
                        last = Some(result);
                    }
                }
                last
            })
            .map_err(|e| RankError::Io {
                what: "starting the checkpoint upload thread".into(),
                source: e,
            })?;
        Ok(Uploader {
            tx: Some(tx),
            finishing,
            thread: Some(thread),
        })
    }

    /// Starts uploading `p` unless the previous upload is still running; then this one is
    /// skipped (with a line saying so), so training never waits on the network.
    pub fn offer(&self, p: Outgoing) {
        let Some(tx) = &self.tx else { return };
        let step = p.state.step;
        if let Err(mpsc::TrySendError::Full(_)) = tx.try_send((p, false)) {
            println!("checkpoint step {step} skipped: the previous upload is still running");
        }
    }

    /// The job's last checkpoint is not optional: waits for a running upload, uploads `p`
    /// (retrying as long as the launch allows), and fails if it could not be stored, so that
    /// the job does not succeed without it.
    pub fn finish(mut self, p: Option<Outgoing>) -> Result<(), RankError> {
        let step = p.as_ref().map(|p| p.state.step);
        self.finishing.store(true, Ordering::Relaxed);
        if let (Some(tx), Some(p)) = (self.tx.take(), p) {
            let _ = tx.send((p, true));
        }
        let outcome = match self.thread.take() {
            Some(t) => t.join().map_err(|_| RankError::FinalCheckpoint {
                step: step.unwrap_or(0),
                msg: "the upload thread panicked".into(),
            })?,
            None => None,
        };
        match (step, outcome) {
            (Some(step), Some(Err(msg))) => Err(RankError::FinalCheckpoint { step, msg }),
            (Some(step), None) => Err(RankError::FinalCheckpoint {
                step,
                msg: "it was never uploaded".into(),
            }),
            _ => Ok(()),
        }
    }
}

/// Uploads `p`, retrying failures that may pass with exponential backoff (0.5 s doubling to
/// 15 s) until the launch's `upload_retry` has passed, the attempt is stopped, or `give_up`
/// says a newer checkpoint needs the uploader.
fn upload_with_retry(
    client: &RankClient,
    launch: &RankLaunch,
    p: &Outgoing,
    stop: &StopToken,
    give_up: &dyn Fn() -> bool,
) -> Result<u64, UploadError> {
    let deadline = Instant::now() + launch.upload_retry();
    let mut delay = Duration::from_millis(500);
    // Encoded once: every retry sends the same bytes.
    let bytes = state::encode(&p.state);
    loop {
        match upload(client, launch, p, &bytes) {
            Err(UploadError::Unavailable(msg))
                if stop.reason().is_none() && !give_up() && Instant::now() + delay < deadline =>
            {
                eprintln!(
                    "checkpoint step {}: {msg}; retrying in {:.1} s",
                    p.state.step,
                    delay.as_secs_f64()
                );
                let wake = Instant::now() + delay;
                while Instant::now() < wake && stop.reason().is_none() && !give_up() {
                    std::thread::sleep(Duration::from_millis(100));
                }
                delay = (delay * 2).min(Duration::from_secs(15));
            }
            other => return other,
        }
    }
}

enum UploadError {
    /// The coordinator refused the part: this rank's attempt is no longer the live one.
    Superseded(String),
    /// The part itself was refused (malformed): sending it again fails the same way.
    Rejected(String),
    /// Anything that may pass: the coordinator unreachable, restarting, failing a store or
    /// short of disk, or the bytes damaged in transit.
    Unavailable(String),
}

/// Uploads this rank's part of `bytes`, the encoding of `p.state`.
fn upload(
    client: &RankClient,
    launch: &RankLaunch,
    p: &Outgoing,
    bytes: &[u8],
) -> Result<u64, UploadError> {
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
        .map_err(|s| {
            let msg = format!("checkpoint upload: {}", s.message());
            if superseded(&s) {
                UploadError::Superseded(s.message().to_string())
            } else if s.code() == Code::InvalidArgument {
                UploadError::Rejected(msg)
            } else {
                UploadError::Unavailable(msg)
            }
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
                if convoy_client::submit::is_transient(&s) && Instant::now() < deadline =>
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
    if state.step != received.info.step {
        return Err(DownloadError::Bad(format!(
            "{job}@{} holds the state of step {}",
            received.info.step, state.step
        )));
    }
    Ok(Downloaded {
        state,
        step: received.info.step,
        bytes: received.info.size_bytes,
        skipped: received.skipped,
    })
}
