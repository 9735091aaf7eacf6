//! Protobuf ↔ domain at the edge: ids parsed from their text form, domain values rendered into
//! the client API's messages, and core errors mapped to gRPC status codes.

use convoy_proto::v1 as pb;
use tonic::Status;

use crate::error::ApplyError;
use crate::model::{Attempt, AttemptOutcome, Job, JobId, JobState, Liveness, Worker, WorkerId};
use crate::server::event_loop::View;

/// Accepts `job-7` (as listed) or `7`.
pub fn job_id(text: &str) -> Result<JobId, Status> {
    let t = text.trim();
    t.strip_prefix("job-")
        .unwrap_or(t)
        .parse()
        .map(JobId)
        .map_err(|_| Status::invalid_argument(format!("{text:?} is not a job id (like job-7)")))
}

/// Accepts `worker-3` or `3`; names are resolved by the caller.
pub fn worker_id(text: &str) -> Option<WorkerId> {
    let t = text.trim();
    t.strip_prefix("worker-")
        .unwrap_or(t)
        .parse()
        .ok()
        .map(WorkerId)
}

pub fn status(e: ApplyError) -> Status {
    let msg = e.to_string();
    match e {
        ApplyError::UnknownJob(_) | ApplyError::UnknownWorker(_) => Status::not_found(msg),
        ApplyError::InvalidSpec(_)
        | ApplyError::InvalidSubmit(_)
        | ApplyError::InvalidWorker { .. }
        | ApplyError::RankOutOfRange { .. } => Status::invalid_argument(msg),
        ApplyError::DuplicateWorker { .. } => Status::already_exists(msg),
        ApplyError::WorkerLost { .. }
        | ApplyError::StaleGeneration { .. }
        | ApplyError::AttemptEnded { .. }
        | ApplyError::WrongGeneration { .. }
        | ApplyError::JobNotQueued { .. }
        | ApplyError::Held { .. }
        | ApplyError::JobNotRunning { .. }
        | ApplyError::JobAlreadyFinished { .. }
        | ApplyError::NotResumable { .. }
        | ApplyError::BadPlacement { .. }
        | ApplyError::DuplicateExit { .. } => Status::failed_precondition(msg),
    }
}

fn job_state(s: &JobState) -> pb::JobState {
    match s {
        JobState::Queued => pb::JobState::Queued,
        JobState::Running => pb::JobState::Running,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed { .. } => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

fn attempt(a: &Attempt) -> pb::Attempt {
    pb::Attempt {
        generation: a.generation,
        placement: a.placement.iter().map(ToString::to_string).collect(),
        started_at_ms: a.started_at,
        ended_at_ms: a.ended_at.unwrap_or(0),
        outcome: match &a.outcome {
            None => String::new(),
            Some(AttemptOutcome::Succeeded) => "succeeded".into(),
            Some(AttemptOutcome::Cancelled) => "cancelled".into(),
            Some(AttemptOutcome::Failed { reason }) => format!("failed: {reason}"),
        },
    }
}

pub fn job(j: &Job, view: &View<'_>) -> pb::Job {
    let current = j.attempts.last().map(|a| a.generation);
    let latest = view
        .latest
        .get(&j.id)
        .filter(|m| Some(m.generation) == current)
        .cloned();
    let reason = match &j.state {
        JobState::Failed { reason } => reason.clone(),
        JobState::Queued => view.waiting.get(&j.id).cloned().unwrap_or_else(|| {
            match j.attempts.last().and_then(|a| a.outcome.as_ref()) {
                Some(AttemptOutcome::Failed { reason }) => format!("requeued: {reason}"),
                _ => String::new(),
            }
        }),
        _ => String::new(),
    };
    let step = latest
        .as_ref()
        .map(|m| m.step)
        .or_else(|| {
            j.last_progress
                .filter(|p| Some(p.generation) == current)
                .map(|p| p.step)
        })
        .unwrap_or(0);
    pb::Job {
        id: j.id.to_string(),
        name: j.name.clone(),
        state: job_state(&j.state) as i32,
        priority: j.priority,
        world_size: j.world_size as u32,
        steps: j.steps,
        step,
        reason,
        attempts: j.attempts.iter().map(attempt).collect(),
        submitted_at_ms: j.submitted_at,
        latest,
        max_restarts: j.max_restarts,
        backend: format!("{:?}", j.backend).to_lowercase(),
    }
}

pub fn worker(w: &Worker, view: &View<'_>) -> pb::Worker {
    let mut ranks = vec![];
    for j in view.state.jobs.values() {
        if let Some(a) = j.live_attempt() {
            for (rank, wid) in a.placement.iter().enumerate() {
                if *wid == w.id && !a.exits.contains_key(&rank) {
                    ranks.push(format!("{}/{rank}", j.id));
                }
            }
        }
    }
    pb::Worker {
        id: w.id.to_string(),
        name: w.name.clone(),
        cpu_slots: w.slots,
        gpus: w.gpus,
        liveness: match w.liveness {
            Liveness::Alive => "alive".into(),
            Liveness::Lost => "lost".into(),
        },
        cordoned: w.cordon.is_some(),
        last_heartbeat_ms: w.last_heartbeat,
        ranks,
    }
}
