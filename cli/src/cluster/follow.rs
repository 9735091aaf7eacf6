//! Following a job: a progress bar from its metrics, rank 0's output and convoy's own events
//! printed above it, and an exit status that is the job's.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use convoy_client::Channel;
use convoy_proto::v1 as pb;
use convoy_proto::v1::convoy_client::ConvoyClient;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::cluster::rpc;
use crate::display::{say, say_err};

/// Prints a log line as `convoy logs` does: `[convoy]` for convoy's events, `[rank N]` for a
/// rank's output.
pub fn format_line(l: &pb::LogLine) -> String {
    if l.stream == "convoy" {
        format!("[convoy] {}", l.text)
    } else {
        format!("[rank {}] {}", l.rank, l.text)
    }
}

fn bar(steps: u64, json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Follows `id` until it ends; Ok if it succeeded, else an error with the job's reason.
pub async fn follow(client: &mut ConvoyClient<Channel>, id: &str, json: bool) -> Result<()> {
    let job = client
        .get_job(pb::GetJobRequest { job_id: id.into() })
        .await
        .map_err(rpc)?
        .into_inner();
    let bar = bar(job.steps, json);
    let mut metrics = client
        .stream_metrics(pb::StreamMetricsRequest {
            job_id: id.into(),
            follow: true,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let mut logs = client
        .stream_logs(pb::StreamLogsRequest {
            job_id: id.into(),
            rank: Some(0),
            follow: true,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let mut metrics_open = true;
    loop {
        tokio::select! {
            m = metrics.message(), if metrics_open => match m {
                Ok(Some(m)) => {
                    if json {
                        say!("{}", json!({
                            "event": if m.val_loss.is_some() { "eval" } else { "step" },
                            "step": m.step, "loss": m.loss, "val_loss": m.val_loss,
                            "lr": m.lr, "throughput": m.throughput, "unit": m.unit,
                            "generation": m.generation,
                        }));
                    } else if m.val_loss.is_none() {
                        bar.set_position(m.step);
                        bar.set_message(format!(
                            "loss {:.4}  {:.0} {}/s",
                            m.loss, m.throughput, m.unit
                        ));
                    }
                }
                Ok(None) => metrics_open = false,
                Err(s) => {
                    bar.abandon();
                    return Err(rpc(s));
                }
            },
            l = logs.message() => match l {
                Ok(Some(l)) => {
                    if json {
                        say!("{}", json!({
                            "event": "log", "rank": l.rank, "stream": l.stream,
                            "generation": l.generation, "text": l.text,
                        }));
                    } else {
                        if bar.is_hidden() {
                            say!("{}", format_line(&l));
                        } else {
                            bar.println(format_line(&l));
                        }
                    }
                }
                // The log stream ends once the job has ended and all its lines are out.
                Ok(None) => break,
                Err(s) => {
                    bar.abandon();
                    return Err(rpc(s));
                }
            },
        }
    }
    bar.finish_and_clear();
    // The final state, waiting briefly in case the stream ended on a shutdown.
    let mut job = client
        .get_job(pb::GetJobRequest { job_id: id.into() })
        .await
        .map_err(rpc)?
        .into_inner();
    for _ in 0..20 {
        if job.state != pb::JobState::Running as i32 && job.state != pb::JobState::Queued as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        job = client
            .get_job(pb::GetJobRequest { job_id: id.into() })
            .await
            .map_err(rpc)?
            .into_inner();
    }
    let state = pb::JobState::try_from(job.state).unwrap_or(pb::JobState::Unspecified);
    let attempts = job.attempts.len();
    if json {
        say!(
            "{}",
            json!({"event": "end", "job_id": id, "state": state_name(state), "reason": job.reason, "attempts": attempts})
        );
    }
    match state {
        pb::JobState::Succeeded => {
            if !json {
                say_err!(
                    "{id} succeeded ({attempts} attempt{})",
                    if attempts == 1 { "" } else { "s" }
                );
            }
            Ok(())
        }
        pb::JobState::Failed => Err(anyhow!("{id} failed: {}", job.reason)),
        pb::JobState::Cancelled => Err(anyhow!("{id} was cancelled")),
        _ => bail!(
            "{id} is still {}: the coordinator stopped answering",
            state_name(state)
        ),
    }
}

pub fn state_name(s: pb::JobState) -> &'static str {
    match s {
        pb::JobState::Unspecified => "unknown",
        pb::JobState::Queued => "queued",
        pb::JobState::Running => "running",
        pb::JobState::Succeeded => "succeeded",
        pb::JobState::Failed => "failed",
        pb::JobState::Cancelled => "cancelled",
    }
}
