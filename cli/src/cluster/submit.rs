//! `convoy submit SPEC`: validate locally, send the spec, optionally follow it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use convoy_client::Channel;
use convoy_client::submit;
use convoy_engine::spec::JobSpec;
use convoy_proto::v1 as pb;
use convoy_proto::v1::convoy_client::ConvoyClient;
use serde_json::json;

use crate::cluster::{connect, follow, rpc};
use crate::display::{say, say_err};

#[derive(Args)]
pub struct SubmitArgs {
    /// The job spec (TOML).
    pub spec: PathBuf,
    /// Higher runs first; FIFO within a priority.
    #[arg(long, default_value_t = 0)]
    pub priority: i32,
    /// Whole-gang restarts allowed before the job fails.
    #[arg(long, default_value_t = 2)]
    pub max_restarts: u32,
    /// Restart an attempt that makes no step progress for this many seconds ("none" to
    /// disable; default 600).
    #[arg(long)]
    pub progress_timeout: Option<String>,
    /// Run with this many ranks instead of the spec's `world_size`.
    #[arg(long)]
    pub world_size: Option<usize>,
    /// Show progress until the job ends; the exit status is then the job's.
    #[arg(long, short)]
    pub follow: bool,
    /// Print the job id as JSON.
    #[arg(long)]
    pub json: bool,
    /// Keep retrying for this many seconds while the coordinator is unreachable or
    /// restarting; retries carry the same request id, so they never create a second job.
    #[arg(long, default_value_t = 60.0)]
    pub retry_for: f64,
}

/// Reads the spec, applies `--world-size`, and checks it the way the coordinator will, so a
/// mistake is reported here with the file's name.
pub fn prepare(spec: &Path, world_size: Option<usize>) -> Result<(String, String)> {
    let mut text =
        std::fs::read_to_string(spec).with_context(|| format!("reading {}", spec.display()))?;
    if let Some(n) = world_size {
        let mut table: toml::Table =
            toml::from_str(&text).with_context(|| format!("{}: not valid TOML", spec.display()))?;
        table.insert("world_size".into(), toml::Value::Integer(n as i64));
        text = toml::to_string(&table).context("writing the spec back")?;
    }
    JobSpec::parse(&text, &spec.display().to_string())?;
    let dir = spec
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let workdir = std::fs::canonicalize(dir)
        .with_context(|| format!("resolving {}", dir.display()))?
        .display()
        .to_string();
    Ok((text, workdir))
}

pub fn progress_timeout(arg: Option<&str>) -> Result<(u64, bool)> {
    match arg {
        None => Ok((0, false)),
        Some("none") => Ok((0, true)),
        Some(s) => {
            let secs: f64 = s.parse().map_err(|_| {
                anyhow::anyhow!("--progress-timeout {s:?}: a number of seconds, or none")
            })?;
            anyhow::ensure!(secs > 0.0, "--progress-timeout {s}: must be positive");
            Ok(((secs * 1000.0) as u64, false))
        }
    }
}

pub async fn run(coordinator: &str, args: SubmitArgs) -> Result<()> {
    let mut client = connect(coordinator).await?;
    submit(&mut client, &args).await?;
    Ok(())
}

/// Submits (and with `--follow` follows) the job; returns its id.
pub async fn submit(client: &mut ConvoyClient<Channel>, args: &SubmitArgs) -> Result<String> {
    let (spec_toml, workdir) = prepare(&args.spec, args.world_size)?;
    let (timeout_ms, no_timeout) = progress_timeout(args.progress_timeout.as_deref())?;
    let request = pb::SubmitJobRequest {
        spec_toml,
        priority: args.priority,
        max_restarts: args.max_restarts,
        progress_timeout_ms: timeout_ms,
        workdir,
        no_progress_timeout: no_timeout,
        request_id: submit::new_request_id(),
    };
    anyhow::ensure!(
        args.retry_for.is_finite() && args.retry_for >= 0.0,
        "--retry-for {}: a number of seconds, 0 or more",
        args.retry_for
    );
    let retry_for = Duration::from_secs_f64(args.retry_for);
    let id = submit::submit_with_retry(client, request, retry_for, |status, delay| {
        say_err!(
            "convoy: submit: {} (retrying in {:.1}s with the same request id)",
            convoy_client::one_line(status),
            delay.as_secs_f64()
        );
    })
    .await
    .map_err(rpc)?;
    if args.json {
        say!("{}", json!({ "job_id": id }));
    } else {
        say!("submitted {id}");
    }
    if args.follow {
        follow::follow(client, &id, args.json).await?;
    }
    Ok(id)
}
