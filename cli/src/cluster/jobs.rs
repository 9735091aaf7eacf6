//! `convoy jobs`, `convoy job show`, `convoy logs`, `convoy cancel`.

use anyhow::Result;
use convoy_proto::v1 as pb;
use serde_json::{Value, json};

use crate::cluster::follow::{format_line, state_name};
use crate::cluster::{ago, connect, rpc};
use crate::display::say;

pub fn state(j: &pb::Job) -> &'static str {
    state_name(pb::JobState::try_from(j.state).unwrap_or(pb::JobState::Unspecified))
}

pub fn job_json(j: &pb::Job) -> Value {
    json!({
        "id": j.id,
        "name": j.name,
        "owner": j.owner,
        "state": state(j),
        "priority": j.priority,
        "world_size": j.world_size,
        "backend": j.backend,
        "step": j.step,
        "steps": j.steps,
        "loss": j.latest.as_ref().map(|m| m.loss),
        "throughput": j.latest.as_ref().map(|m| m.throughput),
        "unit": j.latest.as_ref().map(|m| m.unit.clone()),
        "reason": j.reason,
        "max_restarts": j.max_restarts,
        "submitted_at_ms": j.submitted_at_ms,
        "attempts": j.attempts.iter().map(|a| json!({
            "generation": a.generation,
            "placement": a.placement,
            "started_at_ms": a.started_at_ms,
            "ended_at_ms": a.ended_at_ms,
            "outcome": a.outcome,
        })).collect::<Vec<_>>(),
    })
}

pub async fn list(coordinator: &str, user: Option<String>, json_out: bool) -> Result<()> {
    let mut c = connect(coordinator).await?;
    let jobs = c
        .list_jobs(pb::ListJobsRequest {
            user: user.unwrap_or_default(),
        })
        .await
        .map_err(rpc)?
        .into_inner()
        .jobs;
    if json_out {
        say!("{}", Value::Array(jobs.iter().map(job_json).collect()));
        return Ok(());
    }
    say!(
        "{:<10} {:<20} {:<12} {:<10} {:>4} {:>5} {:>13} {:>8} {:>8}  REASON",
        "ID",
        "NAME",
        "USER",
        "STATE",
        "PRIO",
        "RANKS",
        "STEP",
        "LOSS",
        "ATTEMPTS"
    );
    for j in &jobs {
        say!(
            "{:<10} {:<20} {:<12} {:<10} {:>4} {:>5} {:>13} {:>8} {:>8}  {}",
            j.id,
            j.name,
            if j.owner.is_empty() { "-" } else { &j.owner },
            state(j),
            j.priority,
            j.world_size,
            format!("{}/{}", j.step, j.steps),
            j.latest
                .as_ref()
                .map_or("-".into(), |m| format!("{:.4}", m.loss)),
            j.attempts.len(),
            j.reason
        );
    }
    Ok(())
}

/// `convoy job delete JOB`: the job, its logs and metrics, and its checkpoints unless kept.
pub async fn delete(
    coordinator: &str,
    id: &str,
    keep_checkpoints: bool,
    json_out: bool,
) -> Result<()> {
    let mut c = connect(coordinator).await?;
    let r = c
        .delete_job(pb::DeleteJobRequest {
            job_id: id.into(),
            keep_checkpoints,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    if json_out {
        say!(
            "{}",
            serde_json::json!({
                "job_id": id,
                "checkpoints_removed": r.checkpoints_removed,
                "records_removed": r.records_removed,
            })
        );
    } else {
        let kept = if keep_checkpoints {
            " (its checkpoints are kept)"
        } else {
            ""
        };
        say!(
            "deleted {id}: {} checkpoints and {} log and metric records removed{kept}",
            r.checkpoints_removed,
            r.records_removed
        );
    }
    Ok(())
}

pub async fn show(coordinator: &str, id: &str, json_out: bool) -> Result<()> {
    let mut c = connect(coordinator).await?;
    let j = c
        .get_job(pb::GetJobRequest { job_id: id.into() })
        .await
        .map_err(rpc)?
        .into_inner();
    if json_out {
        say!("{}", job_json(&j));
        return Ok(());
    }
    say!("{} ({})", j.id, j.name);
    say!(
        "  owner:      {}",
        if j.owner.is_empty() { "-" } else { &j.owner }
    );
    say!("  state:      {}", state(&j));
    if !j.reason.is_empty() {
        say!("  reason:     {}", j.reason);
    }
    say!("  priority:   {}", j.priority);
    say!("  ranks:      {} ({})", j.world_size, j.backend);
    say!("  progress:   step {}/{}", j.step, j.steps);
    if let Some(m) = &j.latest {
        say!(
            "  loss:       {:.4}   {:.0} {}/s   lr {:.2e}",
            m.loss,
            m.throughput,
            m.unit,
            m.lr
        );
    }
    say!("  submitted:  {}", ago(j.submitted_at_ms));
    say!("  restarts:   {} allowed", j.max_restarts);
    say!("  attempts:");
    for a in &j.attempts {
        say!(
            "    {}: started {}, on {}{}",
            a.generation,
            ago(a.started_at_ms),
            a.placement.join(", "),
            if a.outcome.is_empty() {
                " (running)".into()
            } else {
                format!(" — {}", a.outcome)
            }
        );
    }
    Ok(())
}

pub async fn cancel(coordinator: &str, id: &str, json_out: bool) -> Result<()> {
    let mut c = connect(coordinator).await?;
    let j = c
        .cancel_job(pb::CancelJobRequest { job_id: id.into() })
        .await
        .map_err(rpc)?
        .into_inner();
    if json_out {
        say!("{}", job_json(&j));
    } else {
        say!("{} {}", j.id, state(&j));
    }
    Ok(())
}

pub async fn logs(
    coordinator: &str,
    id: &str,
    follow: bool,
    rank: Option<u32>,
    json_out: bool,
) -> Result<()> {
    let mut c = connect(coordinator).await?;
    let mut stream = c
        .stream_logs(pb::StreamLogsRequest {
            job_id: id.into(),
            rank,
            follow,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    while let Some(l) = stream.message().await.map_err(rpc)? {
        if json_out {
            say!(
                "{}",
                json!({"rank": l.rank, "generation": l.generation, "stream": l.stream, "text": l.text, "at_ms": l.at_ms})
            );
        } else {
            say!("{}", format_line(&l));
        }
    }
    Ok(())
}
