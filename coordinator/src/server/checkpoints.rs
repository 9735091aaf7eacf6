//! Checkpoint transfers: ranks upload their parts, ranks and the CLI download, the CLI lists
//! and verifies. The bytes go to the [`CheckpointStore`] directly, never through the event
//! loop (which only answers whether the uploading attempt is still the live one), so a
//! 100 MB upload does not hold up heartbeats.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use convoy_proto::v1 as pb;
use convoy_proto::v1::raft_peer_client::RaftPeerClient;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::checkpoints::{CheckpointError, CheckpointStore, Manifest, PartKey};
use crate::log::codec::RecordOp;
use crate::model::JobId;
use crate::replication::{PartReplica, PartStream};
use crate::server::checkpoint_mirror::{Mirror, MirrorTargets};
use crate::server::clock::now_ms;
use crate::server::convert;
use crate::server::fail_stop::FailStop;
use crate::server::handle::Handle;
use crate::server::request::RankKey;

pub type DownloadStream =
    Pin<Box<dyn Stream<Item = Result<pb::CheckpointDownload, Status>> + Send>>;

/// What rank 0's part says about the checkpoint (metrics, model), kept until the last part
/// commits it.
type PendingMeta = Arc<Mutex<BTreeMap<(JobId, u64, u64), (BTreeMap<String, f64>, String)>>>;

/// The largest checkpoint accepted (a GPT-2 XL with AdamW moments is about 19 GB).
const MAX_CHECKPOINT_BYTES: u64 = 256 << 30;
/// Disk space an upload must leave free: the command log, the index and the records need it.
const DISK_MARGIN: u64 = 64 << 20;
/// How long a peer may take to list its checkpoints for a repair.
const LIST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long fetching one checkpoint from a peer may take before it is abandoned (a frozen
/// peer must not hold the repairs up for ever).
const FETCH_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone)]
pub(crate) struct Checkpoints {
    store: CheckpointStore,
    pending: PendingMeta,
    handle: Handle,
    /// A replica's peers, to which the parts it receives as leader are copied.
    mirror: Option<Arc<MirrorTargets>>,
}

/// Damaged bytes (stored or received) are data loss; anything else is the store failing. A
/// failure of the sled index is fatal (see [`FailStop`]); one of a chunk file (a full disk
/// during an upload) fails that upload only.
fn storage(fail: &FailStop, e: CheckpointError) -> Status {
    if e.is_damage() || matches!(e, CheckpointError::ChecksumMismatch { .. }) {
        return Status::data_loss(e.to_string());
    }
    if matches!(e, CheckpointError::Storage { .. }) {
        fail.fail("the checkpoint index", &e);
    }
    Status::internal(e.to_string())
}

/// A read that failed because retention removed the checkpoint meanwhile is not damage: say so.
fn read_failure(
    store: &CheckpointStore,
    fail: &FailStop,
    m: &Manifest,
    e: CheckpointError,
) -> Status {
    match store.get(m.job, m.step) {
        Ok(None) => Status::not_found(format!(
            "{} step {} was removed by retention while it was being read",
            m.job, m.step
        )),
        _ => storage(fail, e),
    }
}

pub fn info(m: &Manifest) -> pb::CheckpointInfo {
    pb::CheckpointInfo {
        job_id: m.job.to_string(),
        step: m.step,
        created_at_ms: m.created_at_ms,
        size_bytes: m.total_len,
        metrics: m.metrics.clone().into_iter().collect(),
        generation: m.generation,
        model: m.model.clone(),
        damage: String::new(),
    }
}

impl Checkpoints {
    /// Fails with "unknown job …" unless the coordinator has `job`, or kept its checkpoints
    /// when it was deleted.
    async fn known_job(&self, job: JobId) -> Result<(), Status> {
        let known = self
            .handle
            .read(move |v| v.state.job(job).map(|_| ()))
            .await?;
        match known {
            Ok(()) => Ok(()),
            Err(e) => match self.store.latest(job) {
                Ok(Some(_)) => Ok(()),
                _ => Err(convert::status(e)),
            },
        }
    }

    /// Removes every checkpoint of `job` (a deleted job); returns how many.
    pub async fn remove_job(&self, job: JobId) -> Result<u64, Status> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.remove_job(job))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| storage(&self.handle.fail_stop, e))
    }

    pub fn new(store: CheckpointStore, handle: Handle, mirror: Option<MirrorTargets>) -> Self {
        Checkpoints {
            store,
            pending: Arc::default(),
            handle,
            mirror: mirror.map(Arc::new),
        }
    }

    /// Refuses a part the disk cannot hold (with a margin for the index and the command log)
    /// before a byte of it is written: a full disk would stop the coordinator. The rank retries
    /// later, when retention or an operator has freed space.
    fn room_for(&self, len: u64) -> Result<(), Status> {
        let free = match self.store.free_bytes() {
            Ok(free) => free,
            Err(e) => return Err(storage(&self.handle.fail_stop, e)),
        };
        if free < len.saturating_add(DISK_MARGIN) {
            return Err(Status::resource_exhausted(format!(
                "the coordinator's checkpoint disk has {} MiB free; this part needs {} MiB \
                 and {} MiB stay free for the coordinator's own state",
                free >> 20,
                len >> 20,
                DISK_MARGIN >> 20
            )));
        }
        Ok(())
    }

    /// One rank's part (sent by `rank` when authentication is on): checked against the live
    /// attempt, stored chunk by chunk, and committed when it is the last part to arrive. A
    /// failed upload leaves nothing behind.
    pub async fn upload(
        &self,
        mut stream: Streaming<pb::CheckpointUpload>,
        rank: Option<RankKey>,
    ) -> Result<pb::UploadCheckpointResponse, Status> {
        let (first, part, job) = first_part(&mut stream).await?;
        let generation = part.generation;
        // A rank sends its own part only (part = rank).
        if let Some(k) = rank
            && (k.job, k.generation, k.rank) != (job, generation, part.part as usize)
        {
            return Err(Status::permission_denied(format!(
                "rank {} of {} attempt {} may not upload part {} of {job} attempt {generation}",
                k.rank, k.job, k.generation, part.part
            )));
        }
        let (retention, world_size, steps) = self
            .handle
            .read(move |v| {
                let attempt = v.state.check_live_generation(job, generation)?;
                let world_size = attempt.placement.len();
                v.state
                    .job(job)
                    .map(|j| (j.retention.clone(), world_size, j.steps))
            })
            .await?
            .map_err(convert::status)?;
        // Each rank sends one part: a different count is a rank of another shape.
        if part.parts as usize != world_size {
            return Err(Status::invalid_argument(format!(
                "a checkpoint in {} parts from an attempt of {world_size} ranks",
                part.parts
            )));
        }
        if part.step == 0 || part.step > steps {
            return Err(Status::invalid_argument(format!(
                "a checkpoint at step {} of a job of {steps} steps",
                part.step
            )));
        }
        self.room_for(part.len)?;
        let key = PartKey {
            job,
            step: part.step,
            generation,
            part: part.part,
        };
        let mirror = self.mirror.as_ref().map(|m| m.open());
        let result = self.receive(&key, &part, first, &mut stream, mirror).await;
        let committed = match result {
            Ok(c) => c,
            Err(e) => {
                self.forget(job, part.step, generation);
                let store = self.store.clone();
                let step = part.step;
                let _ =
                    tokio::task::spawn_blocking(move || store.abort(job, step, generation)).await;
                self.handle.event(
                    job,
                    generation,
                    format!(
                        "checkpoint step {} not saved: part {} failed: {}",
                        part.step,
                        part.part,
                        e.message()
                    ),
                );
                return Err(e);
            }
        };
        if let Some(m) = &committed {
            let note = self.after_commit(job, m.step, Some(retention)).await?;
            self.handle.event(
                job,
                generation,
                format!(
                    "checkpoint step {} saved ({:.1} MiB in {} parts){note}",
                    m.step,
                    m.total_len as f64 / (1 << 20) as f64,
                    m.parts.len()
                ),
            );
        }
        Ok(pb::UploadCheckpointResponse {
            committed: committed.is_some(),
        })
    }

    /// Removes what the new checkpoint makes unnecessary: uploads older than it that never
    /// completed, and, given the job's `retention` (where the checkpoint was uploaded, not
    /// copied), the checkpoints it lets go. A replicated coordinator removes those through
    /// the log, so that every replica removes the same ones in the same order and none
    /// fetches them back. A note for the job's log.
    async fn after_commit(
        &self,
        job: JobId,
        step: u64,
        retention: Option<crate::model::Retention>,
    ) -> Result<String, Status> {
        let store = self.store.clone();
        let replicated = self.mirror.is_some();
        let removed = tokio::task::spawn_blocking(move || {
            store.collect_older_uploads(job, step)?;
            match retention {
                None => Ok(vec![]),
                Some(r) if replicated => store.retention_removals(job, &r),
                Some(r) => store.apply_retention(job, &r),
            }
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let steps = match removed {
            Ok(steps) if steps.is_empty() => return Ok(String::new()),
            Ok(steps) => steps,
            Err(e) => return Ok(format!("; retention failed: {e}")),
        };
        if replicated {
            let op = RecordOp::ForgetCheckpoints {
                job,
                steps: steps.clone(),
            };
            if let Err(e) = self.handle.append_records(vec![op]).await {
                // The next checkpoint's retention covers these steps again.
                return Ok(format!("; retention deferred: {}", e.message()));
            }
        }
        Ok(format!("; removed step(s) {steps:?} by retention"))
    }

    /// Stores a part received from the rank (or, on a replica, copied by the leader), copying
    /// every message to `mirror` when there is one: the part counts as stored once a majority
    /// holds it, and only then may it commit the checkpoint.
    async fn receive(
        &self,
        key: &PartKey,
        part: &pb::CheckpointPart,
        first: pb::CheckpointUpload,
        stream: &mut Streaming<pb::CheckpointUpload>,
        mut mirror: Option<Mirror>,
    ) -> Result<Option<Manifest>, Status> {
        let mut index = 0u32;
        let mut received = 0u64;
        let mut next = Some(first);
        while let Some(msg) = next {
            if let Some(m) = &mut mirror {
                m.send(&msg).await;
            }
            if !msg.data.is_empty() {
                received += msg.data.len() as u64;
                if received > part.len {
                    return Err(Status::invalid_argument(format!(
                        "checkpoint part {} sent more than its {} bytes",
                        part.part, part.len
                    )));
                }
                self.store
                    .put_chunk(key, index, &msg.data, msg.checksum)
                    .map_err(|e| storage(&self.handle.fail_stop, e))?;
                index += 1;
            }
            next = stream.message().await?;
            if next.as_ref().is_some_and(|m| m.part.is_some()) {
                return Err(Status::invalid_argument(
                    "a checkpoint upload names its part once, in its first message",
                ));
            }
        }
        if received != part.len {
            return Err(Status::invalid_argument(format!(
                "checkpoint part {} ended after {received} of its {} bytes",
                part.part, part.len
            )));
        }
        self.store
            .finish_part(key, part.offset, part.len, index)
            .map_err(|e| storage(&self.handle.fail_stop, e))?;
        if let Some(m) = mirror {
            m.finish().await?;
        }
        let id = (key.job, key.step, key.generation);
        let meta = {
            // A panic elsewhere cannot leave this map half-updated: inserts and removes only.
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if part.part == 0 {
                pending.insert(
                    id,
                    (
                        part.metrics.clone().into_iter().collect(),
                        part.model.clone(),
                    ),
                );
            }
            pending.get(&id).cloned()
        };
        // Rank 0's part carries the metadata; until it has arrived nothing can commit.
        let Some((metrics, model)) = meta else {
            return Ok(None);
        };
        let store = self.store.clone();
        let (parts, total) = (part.parts, part.total_len);
        let committed = tokio::task::spawn_blocking(move || {
            store.commit(id.0, id.1, id.2, parts, total, now_ms(), metrics, model)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| storage(&self.handle.fail_stop, e))?;
        if committed.is_some() {
            self.forget(id.0, id.1, id.2);
        }
        Ok(committed)
    }

    fn forget(&self, job: JobId, step: u64, generation: u64) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(job, step, generation));
    }

    /// The checkpoint at `step`, or the newest that verifies (with the reasons newer ones were
    /// skipped, also written to the job's log). Replicated, the newest is looked for on the
    /// other replicas too: one a majority acknowledged may be missing here (this replica
    /// leads since a failover and was behind), or damaged here and whole there.
    async fn resolve(
        &self,
        job: JobId,
        step: Option<u64>,
    ) -> Result<(Manifest, Vec<String>), Status> {
        self.known_job(job).await?;
        if step.is_none() {
            self.repair(Some(job)).await?;
        }
        let store = self.store.clone();
        let found = tokio::task::spawn_blocking(move || match step {
            Some(s) => store.get(job, s).map(|m| (m, vec![])),
            None => store.latest_valid(job),
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| storage(&self.handle.fail_stop, e))?;
        let (mut manifest, mut skipped) = found;
        if step.is_none() && !skipped.is_empty() && self.repair(Some(job)).await? > 0 {
            // Newer checkpoints were damaged here and good copies came from the replicas.
            let store = self.store.clone();
            (manifest, skipped) = tokio::task::spawn_blocking(move || store.latest_valid(job))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| storage(&self.handle.fail_stop, e))?;
        }
        let skipped: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        for s in &skipped {
            self.handle
                .records
                .append_event(job, 0, format!("{s}; using an older checkpoint"));
        }
        let manifest = manifest.ok_or_else(|| match step {
            Some(s) => Status::not_found(format!("{job} has no checkpoint at step {s}")),
            None => Status::not_found(format!("{job} has no usable checkpoint")),
        })?;
        Ok((manifest, skipped))
    }

    pub async fn download(
        &self,
        r: pb::DownloadCheckpointRequest,
    ) -> Result<DownloadStream, Status> {
        let job = convert::job_id(&r.job_id)?;
        let (manifest, skipped) = self.resolve(job, r.step).await?;
        let (tx, rx) = mpsc::channel(4);
        let store = self.store.clone();
        let fail = self.handle.fail_stop.clone();
        tokio::task::spawn_blocking(move || {
            let mut first = Some(pb::CheckpointDownload {
                info: Some(info(&manifest)),
                skipped,
                ..Default::default()
            });
            for chunk in store.read_chunks(&manifest) {
                let msg = match chunk {
                    Ok(data) => {
                        let mut m = first.take().unwrap_or_default();
                        m.checksum = xxhash_rust::xxh3::xxh3_64(&data);
                        m.data = data.to_vec();
                        Ok(m)
                    }
                    Err(e) => Err(read_failure(&store, &fail, &manifest, e)),
                };
                let failed = msg.is_err();
                if tx.blocking_send(msg).is_err() || failed {
                    return;
                }
            }
            if let Some(m) = first {
                let _ = tx.blocking_send(Ok(m));
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    pub async fn list(&self, job_id: &str) -> Result<pb::ListCheckpointsResponse, Status> {
        let job = convert::job_id(job_id)?;
        self.known_job(job).await?;
        let list = self
            .store
            .listing(job)
            .map_err(|e| storage(&self.handle.fail_stop, e))?;
        let checkpoints = list
            .into_iter()
            .map(|l| {
                let mut i = match &l.manifest {
                    Some(m) => info(m),
                    None => pb::CheckpointInfo {
                        job_id: job.to_string(),
                        step: l.step,
                        ..Default::default()
                    },
                };
                i.damage = l.damage.unwrap_or_default();
                i
            })
            .collect();
        Ok(pb::ListCheckpointsResponse { checkpoints })
    }

    pub async fn verify(
        &self,
        r: pb::VerifyCheckpointRequest,
    ) -> Result<pb::VerifyCheckpointResponse, Status> {
        let job = convert::job_id(&r.job_id)?;
        self.known_job(job).await?;
        let store = self.store.clone();
        let fail = self.handle.fail_stop.clone();
        let manifest = match r.step {
            Some(s) => store.get(job, s),
            None => store.latest(job),
        }
        .map_err(|e| storage(&self.handle.fail_stop, e))?
        .ok_or_else(|| match r.step {
            Some(s) => Status::not_found(format!("{job} has no checkpoint at step {s}")),
            None => Status::not_found(format!("{job} has no checkpoints")),
        })?;
        let m = manifest.clone();
        tokio::task::spawn_blocking(move || {
            store
                .verify(&m)
                .map_err(|e| read_failure(&store, &fail, &m, e))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(pb::VerifyCheckpointResponse {
            info: Some(info(&manifest)),
            chunks: manifest.chunk_count() as u64,
        })
    }
}

/// Reads an upload's first message, which names the part, and checks the part's description
/// before anything is stored: the message, the part and the job it belongs to.
async fn first_part(
    stream: &mut Streaming<pb::CheckpointUpload>,
) -> Result<(pb::CheckpointUpload, pb::CheckpointPart, JobId), Status> {
    let first = stream
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("an empty checkpoint upload"))?;
    let part = first.part.clone().ok_or_else(|| {
        Status::invalid_argument("the first message of a checkpoint upload must name its part")
    })?;
    let job = convert::job_id(&part.job_id)?;
    if part.parts == 0
        || part.part >= part.parts
        || part
            .offset
            .checked_add(part.len)
            .is_none_or(|end| end > part.total_len)
    {
        return Err(Status::invalid_argument(format!(
            "checkpoint part {} of {} covers bytes {}..+{} of {}: out of range",
            part.part, part.parts, part.offset, part.len, part.total_len
        )));
    }
    if part.total_len > MAX_CHECKPOINT_BYTES {
        return Err(Status::invalid_argument(format!(
            "a checkpoint of {} bytes; the limit is {MAX_CHECKPOINT_BYTES}",
            part.total_len
        )));
    }
    Ok((first, part, job))
}

/// A replica storing the copy of a part its leader received: the leader checked the attempt;
/// the part commits the checkpoint here when it completes it, as on the leader.
#[tonic::async_trait]
impl PartReplica for Checkpoints {
    async fn put_part(
        &self,
        mut stream: Streaming<pb::CheckpointUpload>,
    ) -> Result<pb::UploadCheckpointResponse, Status> {
        let (first, part, job) = first_part(&mut stream).await?;
        // A job this replica has not heard of yet (it is behind) is refused: its copy comes
        // again with the next repair.
        self.handle
            .read_local(move |v| v.state.job(job).map(|_| ()))
            .await?
            .map_err(convert::status)?;
        self.room_for(part.len)?;
        let key = PartKey {
            job,
            step: part.step,
            generation: part.generation,
            part: part.part,
        };
        match self.receive(&key, &part, first, &mut stream, None).await {
            Ok(committed) => {
                if let Some(m) = &committed {
                    self.after_commit(job, m.step, None).await?;
                }
                Ok(pb::UploadCheckpointResponse {
                    committed: committed.is_some(),
                })
            }
            Err(e) => {
                self.forget(job, part.step, part.generation);
                let store = self.store.clone();
                let step = part.step;
                let generation = part.generation;
                let _ =
                    tokio::task::spawn_blocking(move || store.abort(job, step, generation)).await;
                Err(e)
            }
        }
    }

    async fn list_steps(&self, jobs: Vec<String>) -> Result<pb::CheckpointSteps, Status> {
        if jobs.is_empty() {
            let store = self.store.clone();
            let all = tokio::task::spawn_blocking(move || store.all_checkpoints())
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| storage(&self.handle.fail_stop, e))?;
            let steps = all
                .into_iter()
                .map(|m| pb::CheckpointStep {
                    job_id: m.job.to_string(),
                    step: m.step,
                    parts: m.parts.len() as u32,
                })
                .collect();
            return Ok(pb::CheckpointSteps { steps });
        }
        let mut steps = vec![];
        for id in jobs {
            let job = convert::job_id(&id)?;
            let store = self.store.clone();
            let list = tokio::task::spawn_blocking(move || store.list(job))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| storage(&self.handle.fail_stop, e))?;
            steps.extend(list.into_iter().map(|m| pb::CheckpointStep {
                job_id: id.clone(),
                step: m.step,
                parts: m.parts.len() as u32,
            }));
        }
        Ok(pb::CheckpointSteps { steps })
    }

    async fn fetch_part(&self, r: pb::FetchCheckpointPartRequest) -> Result<PartStream, Status> {
        let job = convert::job_id(&r.job_id)?;
        let store = self.store.clone();
        let step = r.step;
        let manifest = tokio::task::spawn_blocking(move || store.get(job, step))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| storage(&self.handle.fail_stop, e))?
            .ok_or_else(|| Status::not_found(format!("{job} has no checkpoint at step {step}")))?;
        let index = r.part as usize;
        let part = manifest.parts.get(index).cloned().ok_or_else(|| {
            Status::not_found(format!("{job} step {step} has no part {}", r.part))
        })?;
        let header = pb::CheckpointPart {
            job_id: r.job_id.clone(),
            generation: manifest.generation,
            step,
            part: r.part,
            parts: manifest.parts.len() as u32,
            total_len: manifest.total_len,
            offset: part.offset,
            len: part.len,
            metrics: if index == 0 {
                manifest.metrics.clone().into_iter().collect()
            } else {
                Default::default()
            },
            model: if index == 0 {
                manifest.model.clone()
            } else {
                String::new()
            },
        };
        let before: usize = manifest.parts[..index].iter().map(|p| p.chunks.len()).sum();
        let (tx, rx) = mpsc::channel(4);
        let store = self.store.clone();
        let fail = self.handle.fail_stop.clone();
        tokio::task::spawn_blocking(move || {
            let mut first = Some(header);
            let chunks = store
                .read_chunks(&manifest)
                .skip(before)
                .take(part.chunks.len());
            for (chunk, info) in chunks.zip(&part.chunks) {
                let msg = match chunk {
                    Ok(data) => Ok(pb::CheckpointUpload {
                        part: first.take(),
                        data,
                        checksum: info.checksum,
                    }),
                    Err(e) => Err(read_failure(&store, &fail, &manifest, e)),
                };
                let failed = msg.is_err();
                if tx.blocking_send(msg).is_err() || failed {
                    return;
                }
            }
            if let Some(h) = first {
                // An empty part: its description alone.
                let _ = tx.blocking_send(Ok(pb::CheckpointUpload {
                    part: Some(h),
                    ..Default::default()
                }));
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

impl Checkpoints {
    /// Fetches from the other replicas every committed checkpoint of `only` (of all the
    /// cluster's jobs when `None`) that this replica lacks (it was down, behind or wiped when
    /// it was copied) or holds damaged, so that what a majority acknowledged stays here to
    /// resume from and to copy again. Returns how many it fetched.
    pub async fn repair(&self, only: Option<JobId>) -> Result<usize, Status> {
        let Some(targets) = self.mirror.clone() else {
            return Ok(0);
        };
        // One job, or every checkpoint a peer holds (one scan there, however many jobs).
        let job_ids: Vec<String> = only.iter().map(ToString::to_string).collect();
        let mut fetched = 0;
        for (peer, mut client) in targets.peers() {
            let request = targets.request(pb::ListCheckpointStepsRequest {
                job_ids: job_ids.clone(),
            });
            // A frozen peer must not hold up a resume, nor the next repairs.
            let listed = tokio::time::timeout(LIST_TIMEOUT, client.list_checkpoint_steps(request));
            let steps = match listed.await {
                Ok(Ok(r)) => r.into_inner().steps,
                Ok(Err(s)) => {
                    // An unreachable peer is reported by the transport; try the next one.
                    tracing::debug!("listing replica {peer}'s checkpoints: {}", s.message());
                    continue;
                }
                Err(_) => {
                    tracing::debug!("replica {peer} did not list its checkpoints in time");
                    continue;
                }
            };
            let steps: Vec<(JobId, pb::CheckpointStep)> = steps
                .into_iter()
                .filter_map(|s| Some((convert::job_id(&s.job_id).ok()?, s)))
                .collect();
            // Only the jobs this replica knows: a peer behind may still hold a deleted
            // job's checkpoints.
            let listed: BTreeSet<JobId> = steps.iter().map(|(j, _)| *j).collect();
            let known: BTreeSet<JobId> = self
                .handle
                .read_local(move |v| {
                    listed
                        .into_iter()
                        .filter(|j| v.state.jobs.contains_key(j))
                        .collect()
                })
                .await?;
            let store = self.store.clone();
            let wanted = tokio::task::spawn_blocking(move || {
                let mut wanted = vec![];
                for (job, s) in steps {
                    if known.contains(&job) && store.needs_copy(job, s.step)? {
                        wanted.push((job, s));
                    }
                }
                Ok(wanted)
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| storage(&self.handle.fail_stop, e))?;
            for (job, s) in wanted {
                let step = s.step;
                let fetched_in_time =
                    tokio::time::timeout(FETCH_TIMEOUT, self.fetch(&targets, &mut client, job, &s));
                let result = match fetched_in_time.await {
                    Ok(r) => r,
                    Err(_) => {
                        // The fetch was dropped midway: what it stored goes.
                        self.pending
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .retain(|(j, st, _), _| (*j, *st) != (job, step));
                        let store = self.store.clone();
                        let _ =
                            tokio::task::spawn_blocking(move || store.abort_uploads_of(job, step))
                                .await;
                        Err(Status::deadline_exceeded(format!(
                            "not fetched within {} s",
                            FETCH_TIMEOUT.as_secs()
                        )))
                    }
                };
                match result {
                    Ok(()) => {
                        fetched += 1;
                        tracing::info!("fetched {job} step {step} from replica {peer}");
                    }
                    Err(e) => tracing::warn!(
                        "fetching {job} step {step} from replica {peer}: {}",
                        e.message()
                    ),
                }
            }
        }
        Ok(fetched)
    }

    /// Stores every part of one checkpoint from a peer, part 0 (with the metadata) first, in
    /// place of the damaged copy here if there is one. The peer checks every chunk it sends
    /// against its manifest, so a copy damaged there too fails rather than spreads.
    async fn fetch(
        &self,
        targets: &MirrorTargets,
        client: &mut RaftPeerClient<convoy_client::Channel>,
        job: JobId,
        s: &pb::CheckpointStep,
    ) -> Result<(), Status> {
        let store = self.store.clone();
        let step = s.step;
        tokio::task::spawn_blocking(move || store.clear_damaged(job, step))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| storage(&self.handle.fail_stop, e))?;
        for part in 0..s.parts {
            let request = targets.request(pb::FetchCheckpointPartRequest {
                job_id: s.job_id.clone(),
                step: s.step,
                part,
            });
            let stream = client.fetch_checkpoint_part(request).await?.into_inner();
            self.put_part(stream).await?;
        }
        Ok(())
    }
}
