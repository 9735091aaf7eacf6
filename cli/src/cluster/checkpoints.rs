//! `convoy checkpoints`, `convoy checkpoint export|verify` and `convoy resume`.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use convoy_client::Channel;
use convoy_engine::export::{ExportFormat, export};
use convoy_engine::spec::parse_job_ref;
use convoy_engine::state;
use convoy_proto::v1 as pb;
use convoy_proto::v1::convoy_client::ConvoyClient;
use serde_json::{Value, json};

use super::jobs::{job_json, state as job_state};
use super::{ago, connect, rpc};
use crate::display::{say, say_err};

/// `JOB` or `JOB@STEP`, as `init_from = "job:…"` spells it.
fn parse_ref(text: &str) -> Result<(String, Option<u64>)> {
    parse_job_ref(text).map_err(|e| anyhow!("{e}"))
}

fn info_json(c: &pb::CheckpointInfo) -> Value {
    json!({
        "job_id": c.job_id,
        "step": c.step,
        "created_at_ms": c.created_at_ms,
        "size_bytes": c.size_bytes,
        "generation": c.generation,
        "model": c.model,
        "metrics": c.metrics,
        "damage": (!c.damage.is_empty()).then_some(&c.damage),
    })
}

pub async fn list(coordinator: &str, job: &str, json_out: bool) -> Result<()> {
    let mut c = connect(coordinator).await?;
    let list = c
        .list_checkpoints(pb::ListCheckpointsRequest { job_id: job.into() })
        .await
        .map_err(rpc)?
        .into_inner()
        .checkpoints;
    if json_out {
        say!("{}", Value::Array(list.iter().map(info_json).collect()));
        return Ok(());
    }
    if list.is_empty() {
        say!("{job} has no checkpoints");
        return Ok(());
    }
    say!("{:>8}  {:>10}  {:>10}  METRICS", "STEP", "SAVED", "SIZE");
    for ck in &list {
        let mut metrics: Vec<String> = ck
            .metrics
            .iter()
            .map(|(k, v)| format!("{k}={v:.4}"))
            .collect();
        metrics.sort();
        if !ck.damage.is_empty() {
            metrics = vec![format!("DAMAGED: {}", ck.damage)];
        }
        say!(
            "{:>8}  {:>10}  {:>8.1}MB  {}",
            ck.step,
            ago(ck.created_at_ms),
            ck.size_bytes as f64 / 1e6,
            metrics.join(" ")
        );
    }
    Ok(())
}

pub async fn verify(coordinator: &str, reference: &str, json_out: bool) -> Result<()> {
    let (job, step) = parse_ref(reference)?;
    let mut c = connect(coordinator).await?;
    let r = c
        .verify_checkpoint(pb::VerifyCheckpointRequest { job_id: job, step })
        .await
        .map_err(rpc)?
        .into_inner();
    let info = r
        .info
        .ok_or_else(|| anyhow!("the coordinator sent no checkpoint info"))?;
    if json_out {
        say!(
            "{}",
            json!({"ok": true, "chunks": r.chunks, "checkpoint": info_json(&info)})
        );
    } else {
        say!(
            "{}@{}: ok ({} chunks, {:.1} MB, every checksum matches)",
            info.job_id,
            info.step,
            r.chunks,
            info.size_bytes as f64 / 1e6
        );
    }
    Ok(())
}

pub async fn export_to(
    coordinator: &str,
    reference: &str,
    format: &str,
    output: &Path,
) -> Result<()> {
    let format: ExportFormat = format.parse().map_err(|e| anyhow!("{e}"))?;
    let (job, step) = parse_ref(reference)?;
    let mut c = connect(coordinator).await?;
    if step.is_none() {
        final_checkpoint_kept(&mut c, &job).await?;
    }
    let stream = c
        .download_checkpoint(pb::DownloadCheckpointRequest {
            job_id: job.clone(),
            step,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let received = convoy_client::checkpoint::receive(stream)
        .await
        .map_err(|e| anyhow!("{job}'s checkpoint did not arrive intact: {e}"))?;
    for s in &received.skipped {
        say_err!("note: {s}");
    }
    let (info, bytes) = (received.info, received.bytes);
    let origin = Path::new(&reference).to_path_buf();
    let st = state::decode(&bytes, &origin)?;
    export(&st, format, output).with_context(|| format!("exporting to {}", output.display()))?;
    say!(
        "{}@{} written to {} ({format})",
        info.job_id,
        info.step,
        output.display()
    );
    Ok(())
}

/// "Export the job" means its final state: a job that ended without its final checkpoint (it
/// could not be stored, or the job failed or was cancelled first) is refused, naming the
/// newest step there is, rather than exported as if that were the end.
async fn final_checkpoint_kept(c: &mut ConvoyClient<Channel>, job: &str) -> Result<()> {
    let j = match c.get_job(pb::GetJobRequest { job_id: job.into() }).await {
        Ok(j) => j.into_inner(),
        // Deleted with its checkpoints kept: there is no job left to compare with.
        Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
        Err(s) => return Err(rpc(s)),
    };
    let finished = [
        pb::JobState::Succeeded,
        pb::JobState::Failed,
        pb::JobState::Cancelled,
    ]
    .map(|s| s as i32)
    .contains(&j.state);
    if !finished {
        return Ok(());
    }
    let list = c
        .list_checkpoints(pb::ListCheckpointsRequest { job_id: job.into() })
        .await
        .map_err(rpc)?
        .into_inner();
    let intact = list.checkpoints.iter().filter(|m| m.damage.is_empty());
    match intact.map(|m| m.step).max() {
        Some(newest) if newest >= j.steps => Ok(()),
        Some(newest) => bail!(
            "{job} ended without its final checkpoint (step {}); the newest it has is step \
             {newest}: export {job}@{newest} to use that one",
            j.steps
        ),
        None => bail!("{job} has no checkpoints"),
    }
}

pub async fn resume(coordinator: &str, job: &str, json_out: bool) -> Result<()> {
    let mut c = connect(coordinator).await?;
    let j = c
        .resume_job(pb::ResumeJobRequest { job_id: job.into() })
        .await
        .map_err(rpc)?
        .into_inner();
    if json_out {
        say!("{}", job_json(&j));
    } else {
        say!(
            "{} {} (continues from its latest checkpoint)",
            j.id,
            job_state(&j)
        );
    }
    Ok(())
}
