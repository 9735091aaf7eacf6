//! Protobuf ↔ domain at the edge: ids parsed from their text form, domain values rendered into
//! the client API's messages, and core errors mapped to gRPC status codes.

use convoy_proto::v1 as pb;
use convoy_spec::Backend;
use tonic::Status;

use crate::error::ApplyError;
use crate::model::{Attempt, AttemptOutcome, Job, JobId, JobState, Liveness, Worker, WorkerId};
use crate::server::request::View;

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

/// The backend as the worker API names it.
pub fn backend(b: Backend) -> pb::Backend {
    match b {
        Backend::Cpu => pb::Backend::Cpu,
        Backend::Cuda => pb::Backend::Cuda,
    }
}

/// Whether a worker daemon of `theirs` may join a coordinator of `ours`: the same major and
/// minor version (a 0.x minor release may change the protocol). `Ok(Some(note))` when it may
/// but the patch releases differ, worth a warning.
pub fn version_skew(ours: &str, theirs: &str) -> Result<Option<String>, String> {
    let release = |v: &str| {
        let mut parts = v.trim().splitn(3, '.');
        match (parts.next(), parts.next()) {
            (Some(major), Some(minor)) if !major.is_empty() && !minor.is_empty() => {
                Some((major.to_string(), minor.to_string()))
            }
            _ => None,
        }
    };
    let Some(theirs_release) = release(theirs) else {
        return Err(format!(
            "the worker reports no convoy version ({theirs:?}); this coordinator is {ours}"
        ));
    };
    if release(ours) != Some(theirs_release) {
        return Err(format!(
            "the worker runs convoy {theirs} and this coordinator {ours}: upgrade them to the \
             same release"
        ));
    }
    Ok((ours != theirs.trim())
        .then(|| format!("the worker runs convoy {theirs} and this coordinator {ours}")))
}

pub fn status(e: ApplyError) -> Status {
    let msg = e.to_string();
    match e {
        ApplyError::UnknownJob(_)
        | ApplyError::UnknownWorker(_)
        | ApplyError::Identity(crate::identity::ApiError::UnknownToken(_)) => {
            Status::not_found(msg)
        }
        ApplyError::Identity(crate::identity::ApiError::Token(_)) => Status::invalid_argument(msg),
        ApplyError::InvalidSubmit(_)
        | ApplyError::InvalidWorker { .. }
        | ApplyError::InvalidConfig(_)
        | ApplyError::RankOutOfRange { .. } => Status::invalid_argument(msg),
        ApplyError::DuplicateWorker { .. } | ApplyError::RequestReused { .. } => {
            Status::already_exists(msg)
        }
        ApplyError::WorkerLost { .. }
        | ApplyError::StaleGeneration { .. }
        | ApplyError::AttemptEnded { .. }
        | ApplyError::WrongGeneration { .. }
        | ApplyError::JobNotQueued { .. }
        | ApplyError::Held { .. }
        | ApplyError::JobNotRunning { .. }
        | ApplyError::JobAlreadyFinished { .. }
        | ApplyError::NotResumable { .. }
        | ApplyError::NotFinished { .. }
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
        JobState::Queued => view
            .waiting
            .get(&j.id)
            .map(ToString::to_string)
            .unwrap_or_else(
                || match j.attempts.last().and_then(|a| a.outcome.as_ref()) {
                    Some(AttemptOutcome::Failed { reason }) => format!("requeued: {reason}"),
                    _ => String::new(),
                },
            ),
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
        owner: j.owner.clone(),
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
        registered_at_ms: w.registered_at,
        ranks,
    }
}

#[cfg(test)]
mod tests {
    use super::version_skew;

    #[test]
    fn workers_of_the_same_release_join_and_others_are_refused() {
        assert_eq!(version_skew("0.1.0", "0.1.0"), Ok(None));
        assert!(
            version_skew("0.1.0", "0.1.3")
                .expect("same release")
                .is_some()
        );
        let e = version_skew("0.1.0", "0.2.0").expect_err("another release");
        assert!(e.contains("0.2.0") && e.contains("0.1.0"), "{e}");
        assert!(version_skew("0.1.0", "").is_err());
        assert!(version_skew("0.1.0", "banana").is_err());
    }
}
