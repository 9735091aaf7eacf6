//! `convoy-coordinator`: the coordinator daemon. Flags (or their `CONVOY_*` variables) become
//! a `ServerConfig`; everything else is `convoy_coordinator::server::run`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use convoy_coordinator::ClusterConfig;
use convoy_coordinator::server::{ServerConfig, run};

#[derive(Parser)]
#[command(
    name = "convoy-coordinator",
    version,
    about = "The convoy coordinator daemon"
)]
struct Args {
    /// Address to serve the client and worker APIs on (port 0: any free port; the address is
    /// printed on stdout).
    #[arg(long, env = "CONVOY_LISTEN", default_value = "127.0.0.1:7070")]
    listen: String,
    /// Where the command log, snapshots, logs and metrics are kept.
    #[arg(
        long,
        env = "CONVOY_DATA_DIR",
        default_value = "/var/lib/convoy/coordinator"
    )]
    data_dir: PathBuf,
    /// A worker silent for longer than this is lost (applies when the data directory is new).
    #[arg(long, env = "CONVOY_HEARTBEAT_TIMEOUT_MS", default_value_t = 5000)]
    heartbeat_timeout_ms: u64,
    /// How often workers are told to heartbeat.
    #[arg(long, env = "CONVOY_HEARTBEAT_INTERVAL_MS", default_value_t = 1000)]
    heartbeat_interval_ms: u64,
    /// Rank failures in a row after which a worker is cordoned (0: never).
    #[arg(long, env = "CONVOY_AUTO_CORDON_AFTER", default_value_t = 3)]
    auto_cordon_after: u32,
    /// Log lines kept per job (the oldest go first).
    #[arg(long, env = "CONVOY_LOG_LINES_PER_JOB", default_value_t = 10_000)]
    log_lines_per_job: u64,
}

fn main() -> ExitCode {
    common::init_tracing();
    match serve(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("convoy-coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn serve(args: Args) -> Result<()> {
    let mut config = ServerConfig::new(&args.data_dir);
    config.cluster = ClusterConfig {
        heartbeat_timeout: args.heartbeat_timeout_ms,
        auto_cordon_after: args.auto_cordon_after,
        restart_delay: args.heartbeat_timeout_ms,
    };
    config.heartbeat_interval = Duration::from_millis(args.heartbeat_interval_ms.max(10));
    config.log_lines_per_job = args.log_lines_per_job;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    let shutdown = common::terminated();
    run(listener, config, shutdown, || {
        println!("listening on {addr}");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    })
    .await?;
    Ok(())
}

#[path = "../common.rs"]
mod common;
