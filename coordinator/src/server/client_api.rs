//! `convoy.v1.Convoy`: what the CLI calls.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use convoy_proto::v1 as pb;
use convoy_spec::JobSpec;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::ApplyError;
use crate::identity::{ApiToken, Caller, check_user, secrets};
use crate::log::codec::RecordOp;
use crate::model::{JobId, Liveness, Millis, WorkerId};
use crate::server::admission;
use crate::server::auth;
use crate::server::checkpoints::Checkpoints;
use crate::server::checkpoints::DownloadStream;
use crate::server::clock::now_ms;
use crate::server::convert;
use crate::server::handle::Handle;
use crate::server::limits::Limiters;
use crate::server::request::{Request as LoopRequest, View};
use crate::state::SubmitJob;

/// A submitted spec larger than this is refused before it reaches the state (a spec is a
/// page of TOML; megabytes mean something else was sent).
const MAX_SPEC_BYTES: usize = 1 << 20;
const MAX_REQUEST_ID_BYTES: usize = 128;
/// Records read from the store per round trip while streaming.
const STREAM_CHUNK: usize = 512;

pub struct ClientApi {
    handle: Handle,
    checkpoints: Checkpoints,
    limiters: Arc<Limiters>,
}

impl ClientApi {
    pub(crate) fn new(handle: Handle, checkpoints: Checkpoints, limiters: Arc<Limiters>) -> Self {
        ClientApi {
            handle,
            checkpoints,
            limiters,
        }
    }

    /// Refuses unless `caller` may act on `job` (its owner, or an administrator).
    async fn owned(&self, caller: &Caller, job: JobId) -> Result<(), Status> {
        if caller.is_admin() {
            return Ok(());
        }
        let owner = self
            .handle
            .read(move |v| v.state.job(job).map(|j| j.owner.clone()))
            .await?
            .map_err(convert::status)?;
        caller.may_act_on(job, &owner)
    }

    /// The job `job_id` names, once the caller of `request` may act on it.
    async fn owner_of<T>(&self, request: &Request<T>, job_id: &str) -> Result<JobId, Status> {
        let job = convert::job_id(job_id)?;
        self.owned(&auth::caller(request)?, job).await?;
        Ok(job)
    }

    async fn job(&self, id: JobId) -> Result<pb::Job, Status> {
        self.handle
            .read(move |v| {
                v.state
                    .job(id)
                    .map(|j| convert::job(j, v))
                    .map_err(convert::status)
            })
            .await?
    }

    /// Resolves a worker given by id (`worker-3`) or name.
    async fn worker_id(&self, text: String) -> Result<WorkerId, Status> {
        self.handle
            .read(move |v| {
                if let Some(id) = convert::worker_id(&text)
                    && v.state.workers.contains_key(&id)
                {
                    return Ok(id);
                }
                v.state
                    .workers
                    .values()
                    .find(|w| w.name == text)
                    .map(|w| w.id)
                    .ok_or_else(|| {
                        Status::not_found(format!("no worker named or numbered {text:?}"))
                    })
            })
            .await?
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Which records a stream serves.
#[derive(Clone, Copy)]
enum Kind {
    Logs,
    Metrics,
}

/// Streams a job's kept records of `kind`, then (with `follow`) new ones until the job has
/// reached a final state and everything it wrote has been sent.
fn follow_records<T: Message + Default + 'static>(
    handle: Handle,
    job: JobId,
    kind: Kind,
    follow: bool,
    keep: impl Fn(&T) -> bool + Send + 'static,
) -> BoxStream<T> {
    let (tx, rx) = mpsc::channel(STREAM_CHUNK);
    tokio::spawn(async move {
        let mut changed = handle.records.subscribe();
        let mut stopping = handle.stopping.clone();
        let mut from = 0;
        let mut finished = false;
        loop {
            let read = match kind {
                Kind::Logs => handle.records.read_logs(job, from, STREAM_CHUNK),
                Kind::Metrics => handle.records.read_metrics(job, from, STREAM_CHUNK),
            };
            let (items, next) = match read {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                    return;
                }
            };
            from = next;
            let full = items.len() == STREAM_CHUNK;
            for bytes in items {
                match T::decode(bytes.as_ref()) {
                    Ok(item) if keep(&item) => {
                        if tx.send(Ok(item)).await.is_err() {
                            return; // the client went away
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("skipping an undecodable record of {job}: {e}"),
                }
            }
            if full {
                continue;
            }
            if !follow || finished || *stopping.borrow() {
                return;
            }
            // Ranks' lines are stored before their exit is reported (workers ship logs first),
            // so once the job is final, one more read drains everything.
            let state = handle
                .read(move |v: &View<'_>| v.state.jobs.get(&job).map(|j| j.state.is_final()))
                .await;
            match state {
                Ok(Some(true)) | Ok(None) | Err(_) => {
                    finished = true;
                    continue;
                }
                Ok(Some(false)) => {}
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = stopping.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl pb::convoy_server::Convoy for ClientApi {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let caller = auth::caller(&request)?;
        let owner = caller.owner_name()?;
        if !caller.is_admin() && !self.limiters.submit(&owner) {
            return Err(Status::resource_exhausted(format!(
                "{owner} submits more than {} jobs per second: slow down and submit again",
                self.limiters.limits.submits_per_second
            )));
        }
        let r = request.into_inner();
        if r.spec_toml.len() > MAX_SPEC_BYTES {
            return Err(Status::invalid_argument(format!(
                "the spec is {} bytes; the limit is {MAX_SPEC_BYTES}",
                r.spec_toml.len()
            )));
        }
        let progress_timeout: Option<Millis> = if r.no_progress_timeout {
            None
        } else if r.progress_timeout_ms == 0 {
            Some(SubmitJob::DEFAULT_PROGRESS_TIMEOUT)
        } else {
            Some(r.progress_timeout_ms)
        };
        if r.request_id.len() > MAX_REQUEST_ID_BYTES {
            return Err(Status::invalid_argument(format!(
                "the request id is {} bytes; the limit is {MAX_REQUEST_ID_BYTES}",
                r.request_id.len()
            )));
        }
        // The one place a spec is parsed: the command carries what the cluster needs from it.
        let spec = JobSpec::parse(&r.spec_toml, "the submitted spec")
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        admission::fits_the_cluster(&self.handle, &spec).await?;
        admission::files_exist(&spec, &r.workdir).await?;
        let mut submit = SubmitJob::from_spec(&spec, &r.spec_toml, 0);
        submit.request_id = r.request_id;
        submit.priority = r.priority;
        submit.max_restarts = r.max_restarts;
        submit.progress_timeout = progress_timeout;
        submit.workdir = r.workdir;
        submit.owner = owner;
        // Starting from another job's weights reads them: only its owner may, and only from
        // a checkpoint that exists and fits.
        if let Some((from, step)) = spec.init_from_job() {
            let from = convert::job_id(&from)?;
            let checked = match self.owned(&caller, from).await {
                Ok(()) => {
                    admission::init_checkpoint_fits(&self.checkpoints, &spec, from, step).await
                }
                Err(e) => Err(e),
            };
            checked.map_err(|e| {
                Status::new(
                    e.code(),
                    format!("init_from = \"job:{from}\": {}", e.message()),
                )
            })?;
        }
        tracing::debug!(
            name = submit.name,
            steps = submit.steps,
            world_size = submit.world_size,
            backend = ?submit.backend,
            keep_last = submit.retention.keep_last,
            init_from = submit.init_from,
            request_id = submit.request_id,
            owner = submit.owner,
            "submit"
        );
        let id = self
            .handle
            .call(|reply| LoopRequest::Submit { submit, reply })
            .await?
            .map_err(convert::status)?;
        Ok(Response::new(pb::SubmitJobResponse {
            job_id: id.to_string(),
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        // Every user sees every job (as `squeue` does); acting on one is its owner's.
        let caller = auth::caller(&request)?;
        let user = request.into_inner().user;
        let jobs = self
            .handle
            .read(move |v| {
                v.state
                    .jobs
                    .values()
                    .filter(|j| user.is_empty() || j.owner == user)
                    .map(|j| seen_by(&caller, convert::job(j, v)))
                    .collect()
            })
            .await?;
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = auth::caller(&request)?;
        let id = convert::job_id(&request.into_inner().job_id)?;
        Ok(Response::new(seen_by(&caller, self.job(id).await?)))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let job = self.owner_of(&request, &request.get_ref().job_id).await?;
        self.handle
            .call(|reply| LoopRequest::Cancel { job, reply })
            .await?
            .map_err(convert::status)?;
        Ok(Response::new(self.job(job).await?))
    }

    async fn delete_job(
        &self,
        request: Request<pb::DeleteJobRequest>,
    ) -> Result<Response<pb::DeleteJobResponse>, Status> {
        let job = self.owner_of(&request, &request.get_ref().job_id).await?;
        let r = request.into_inner();
        // The state first: once it returns, the job is gone from every listing and a crash
        // before the data is removed leaves only unreferenced data, which deleting the id
        // again removes.
        let gone = self
            .handle
            .call(|reply| LoopRequest::Delete { job, reply })
            .await?;
        let unknown = matches!(gone, Err(ApplyError::UnknownJob(_)));
        if !unknown {
            gone.map_err(convert::status)?;
        }
        let records_removed = self
            .handle
            .records
            .remove_job(job)
            .map_err(|e| Status::internal(e.to_string()))?;
        let checkpoints_removed = if r.keep_checkpoints {
            0
        } else {
            self.checkpoints.remove_job(job).await?
        };
        // The other replicas remove theirs as they apply this (this one's are gone already).
        if self.handle.replicated {
            self.handle
                .append_records(vec![RecordOp::ForgetJob {
                    job,
                    checkpoints: !r.keep_checkpoints,
                }])
                .await?;
        }
        if unknown && records_removed == 0 && checkpoints_removed == 0 {
            return Err(convert::status(ApplyError::UnknownJob(job)));
        }
        Ok(Response::new(pb::DeleteJobResponse {
            checkpoints_removed,
            records_removed,
        }))
    }

    type StreamLogsStream = BoxStream<pb::LogLine>;

    async fn stream_logs(
        &self,
        request: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        // Unknown ids fail here, not with an empty stream.
        let job = self.owner_of(&request, &request.get_ref().job_id).await?;
        let r = request.into_inner();
        self.job(job).await?;
        let rank = r.rank;
        let keep =
            move |l: &pb::LogLine| rank.is_none_or(|want| l.rank == want || l.stream == "convoy");
        Ok(Response::new(follow_records(
            self.handle.clone(),
            job,
            Kind::Logs,
            r.follow,
            keep,
        )))
    }

    type StreamMetricsStream = BoxStream<pb::StepMetrics>;

    async fn stream_metrics(
        &self,
        request: Request<pb::StreamMetricsRequest>,
    ) -> Result<Response<Self::StreamMetricsStream>, Status> {
        let job = self.owner_of(&request, &request.get_ref().job_id).await?;
        let r = request.into_inner();
        self.job(job).await?;
        Ok(Response::new(follow_records(
            self.handle.clone(),
            job,
            Kind::Metrics,
            r.follow,
            |_: &pb::StepMetrics| true,
        )))
    }

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        auth::caller(&request)?.must_be_admin("list the workers")?;
        let workers = self
            .handle
            .read(|v| {
                v.state
                    .workers
                    .values()
                    .map(|w| convert::worker(w, v))
                    .collect()
            })
            .await?;
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }

    async fn set_cordon(
        &self,
        request: Request<pb::SetCordonRequest>,
    ) -> Result<Response<pb::Worker>, Status> {
        auth::caller(&request)?.must_be_admin("cordon or uncordon workers")?;
        let r = request.into_inner();
        let worker = self.worker_id(r.worker).await?;
        let cordoned = r.cordoned;
        self.handle
            .call(|reply| LoopRequest::SetCordon {
                worker,
                cordoned,
                reply,
            })
            .await?
            .map_err(convert::status)?;
        let w = self
            .handle
            .read(move |v| {
                v.state
                    .worker(worker)
                    .map(|w| convert::worker(w, v))
                    .map_err(convert::status)
            })
            .await??;
        Ok(Response::new(w))
    }

    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let status = self
            .handle
            .read(|v| {
                let s = v.state;
                let usage = s.usage();
                let mut out = pb::ClusterStatusResponse::default();
                for w in s.workers.values() {
                    match w.liveness {
                        Liveness::Alive => {
                            out.workers_alive += 1;
                            if w.cordon.is_none() {
                                out.slots_total = out.slots_total.saturating_add(w.slots);
                                let used = usage.get(&w.id).map_or(0, |u| u.slots);
                                out.slots_free =
                                    out.slots_free.saturating_add(w.slots.saturating_sub(used));
                            }
                        }
                        Liveness::Lost => out.workers_lost += 1,
                    }
                }
                for j in s.jobs.values() {
                    match j.state {
                        crate::model::JobState::Queued => out.jobs_queued += 1,
                        crate::model::JobState::Running => out.jobs_running += 1,
                        _ => {}
                    }
                }
                out
            })
            .await?;
        Ok(Response::new(status))
    }

    async fn list_checkpoints(
        &self,
        request: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        self.owner_of(&request, &request.get_ref().job_id).await?;
        Ok(Response::new(
            self.checkpoints.list(&request.into_inner().job_id).await?,
        ))
    }

    async fn verify_checkpoint(
        &self,
        request: Request<pb::VerifyCheckpointRequest>,
    ) -> Result<Response<pb::VerifyCheckpointResponse>, Status> {
        self.owner_of(&request, &request.get_ref().job_id).await?;
        Ok(Response::new(
            self.checkpoints.verify(request.into_inner()).await?,
        ))
    }

    type DownloadCheckpointStream = DownloadStream;

    async fn download_checkpoint(
        &self,
        request: Request<pb::DownloadCheckpointRequest>,
    ) -> Result<Response<Self::DownloadCheckpointStream>, Status> {
        self.owner_of(&request, &request.get_ref().job_id).await?;
        Ok(Response::new(
            self.checkpoints.download(request.into_inner()).await?,
        ))
    }

    async fn resume_job(
        &self,
        request: Request<pb::ResumeJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let job = self.owner_of(&request, &request.get_ref().job_id).await?;
        self.handle
            .call(|reply| LoopRequest::Resume { job, reply })
            .await?
            .map_err(convert::status)?;
        Ok(Response::new(self.job(job).await?))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        Ok(Response::new(match auth::caller(&request)? {
            Caller::User { name, admin, token } => pb::WhoAmIResponse {
                user: name,
                admin,
                token_id: token.unwrap_or_default(),
                insecure: false,
            },
            _ => pb::WhoAmIResponse {
                user: String::new(),
                admin: true,
                token_id: String::new(),
                insecure: true,
            },
        }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        auth::caller(&request)?.must_be_admin("create tokens")?;
        let r = request.into_inner();
        check_user(&r.user).map_err(Status::invalid_argument)?;
        let (id, hash, text) = secrets::new_api_token();
        let now = now_ms();
        let expires_at = (r.expires_in_ms > 0).then(|| now.saturating_add(r.expires_in_ms));
        let token = ApiToken {
            id: id.clone(),
            user: r.user,
            admin: r.admin,
            hash,
            created_at: now,
            expires_at,
        };
        self.handle
            .call(|reply| LoopRequest::CreateToken { token, reply })
            .await?
            .map_err(convert::status)?;
        let info = self.token_info(id).await?;
        Ok(Response::new(pb::CreateTokenResponse {
            info: Some(info),
            token: text,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        auth::caller(&request)?.must_be_admin("list tokens")?;
        let tokens = self
            .handle
            .read(|v| v.state.identities.tokens.values().map(token_info).collect())
            .await?;
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        auth::caller(&request)?.must_be_admin("revoke tokens")?;
        let id = request.into_inner().id;
        let info = self.token_info(id.clone()).await?;
        self.handle
            .call(|reply| LoopRequest::RevokeToken { id, reply })
            .await?
            .map_err(convert::status)?;
        Ok(Response::new(info))
    }
}

impl ClientApi {
    async fn token_info(&self, id: String) -> Result<pb::TokenInfo, Status> {
        self.handle
            .read(move |v| {
                v.state
                    .identities
                    .tokens
                    .get(&id)
                    .map(token_info)
                    .ok_or_else(|| Status::not_found(format!("no token with id {id:?}")))
            })
            .await?
    }
}

/// `job` as `caller` may see it: a failure reason quotes the rank's last lines, which may
/// hold its data, so only the owner and administrators see the job's or its attempts'.
fn seen_by(caller: &Caller, mut job: pb::Job) -> pb::Job {
    let own = match caller {
        Caller::User { name, .. } => !job.owner.is_empty() && *name == job.owner,
        _ => false,
    };
    if own || caller.is_admin() {
        return job;
    }
    let hidden = format!(
        "failed (the reason is shown to {} only)",
        if job.owner.is_empty() {
            "administrators"
        } else {
            &job.owner
        }
    );
    if job.state == pb::JobState::Failed as i32 {
        job.reason = hidden.clone();
    }
    for a in &mut job.attempts {
        if a.outcome.starts_with("failed") {
            a.outcome = hidden.clone();
        }
    }
    job
}

fn token_info(t: &ApiToken) -> pb::TokenInfo {
    pb::TokenInfo {
        id: t.id.clone(),
        user: t.user.clone(),
        admin: t.admin,
        created_at_ms: t.created_at,
        expires_at_ms: t.expires_at.unwrap_or(0),
    }
}
