//! `convoy-worker`: the worker daemon, and (`convoy-worker rank`, started by the daemon) one
//! training rank. Flags (or their `CONVOY_*` variables) become a `WorkerConfig`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use convoy_worker::WorkerError;
use convoy_worker::daemon::{WorkerConfig, detect_gpus, run};
use convoy_worker::rank::{self, EXIT_SUPERSEDED, RankEnv};

#[derive(Parser)]
#[command(name = "convoy-worker", version, about = "The convoy worker daemon")]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// The coordinator's address.
    #[arg(
        long,
        env = "CONVOY_COORDINATOR",
        default_value = "http://127.0.0.1:7070"
    )]
    coordinator: String,
    /// This worker's name, unique in the cluster (default: the host name).
    #[arg(long, env = "CONVOY_WORKER_NAME")]
    name: Option<String>,
    /// Ranks run at once (default: the number of CPUs).
    #[arg(long, env = "CONVOY_SLOTS")]
    slots: Option<u32>,
    /// Where rank working files go.
    #[arg(
        long,
        env = "CONVOY_DATA_DIR",
        default_value = "/var/lib/convoy/worker"
    )]
    data_dir: PathBuf,
    /// The address other machines reach this machine's ranks at.
    #[arg(long, env = "CONVOY_ADVERTISE_HOST", default_value = "127.0.0.1")]
    advertise_host: String,
    /// Milliseconds between SIGTERM and SIGKILL when ranks are stopped.
    #[arg(long, env = "CONVOY_STOP_GRACE_MS", default_value_t = 10_000)]
    stop_grace_ms: u64,
    /// CPU threads per rank (default: the spec's `threads`, else every core).
    #[arg(long, env = "CONVOY_THREADS_PER_RANK")]
    threads_per_rank: Option<usize>,
    /// How long ranks wait for peers, and the longest a peer may be silent in a collective.
    #[arg(long, env = "CONVOY_COLLECTIVE_TIMEOUT_MS", default_value_t = 60_000)]
    collective_timeout_ms: u64,
}

#[derive(Subcommand)]
enum Sub {
    /// One training rank (started by the daemon, configured through the environment).
    #[command(hide = true)]
    Rank,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Sub::Rank) = args.command {
        return match RankEnv::from_env().and_then(rank::run) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                match e {
                    WorkerError::Superseded(_) => ExitCode::from(EXIT_SUPERSEDED as u8),
                    _ => ExitCode::FAILURE,
                }
            }
        };
    }
    common::init_tracing();
    match daemon(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("convoy-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn daemon(args: Args) -> Result<()> {
    let name = match args.name {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .context("reading the host name (set --name)")?
            .to_string_lossy()
            .into_owned(),
    };
    let slots = match args.slots {
        Some(s) => s,
        None => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
    };
    let config = WorkerConfig {
        coordinator: common::normalize(&args.coordinator),
        name,
        slots,
        gpus: detect_gpus(),
        data_dir: args.data_dir,
        advertise_host: args.advertise_host,
        stop_grace: Duration::from_millis(args.stop_grace_ms),
        rank_program: std::env::current_exe().context("locating convoy-worker")?,
        rank_args: vec!["rank".into()],
        threads_per_rank: args.threads_per_rank,
        collective_timeout: Duration::from_millis(args.collective_timeout_ms.max(1)),
    };
    run(config, common::terminated(), || {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    })
    .await?;
    Ok(())
}

#[path = "../common.rs"]
mod common;
