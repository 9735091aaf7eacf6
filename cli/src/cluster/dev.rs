//! `convoy dev`: a real coordinator and N real worker processes on localhost with a temporary
//! data directory (like `nomad agent -dev`), optionally running one job to the end.
//!
//! The daemons are started by `convoy_harness` (the same code the benchmarks and the tests
//! use) in their own process groups, so Ctrl-C reaches only this command, which then stops
//! them in order (workers first, so their ranks are stopped cleanly) and removes the
//! directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use convoy_harness::{Daemon, Harness, READY_TIMEOUT, bin_dir_of_current_exe};

use crate::cluster::connect;
use crate::cluster::submit::{self, SubmitArgs};

#[derive(Args)]
pub struct DevArgs {
    /// A job spec to submit and follow; without one, the cluster runs until Ctrl-C.
    pub spec: Option<PathBuf>,
    /// Worker daemons to start.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Slots per worker.
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// Run the job with this many ranks instead of the spec's `world_size`.
    #[arg(long)]
    pub world_size: Option<usize>,
    /// CPU threads per rank (default: the cores divided among the slots of all workers).
    #[arg(long)]
    pub threads_per_rank: Option<usize>,
    /// The coordinator's port (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

/// How long each daemon gets to stop on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Stops a daemon, saying so when it had to be killed.
fn stop(d: &mut Daemon) {
    if !d.stop(STOP_GRACE) {
        eprintln!("{} did not stop within {STOP_GRACE:?}; killed it", d.name());
    }
}

pub async fn run(args: DevArgs) -> Result<()> {
    if args.workers == 0 || args.slots == 0 {
        bail!("--workers and --slots must be at least 1");
    }
    // Check the spec before starting anything.
    if let Some(spec) = &args.spec {
        submit::prepare(spec, args.world_size)?;
    }
    let dir = tempfile::Builder::new()
        .prefix("convoy-dev-")
        .tempdir()
        .context("creating a temporary directory")?;
    let result = cluster(&args, dir.path()).await;
    if result.is_err() {
        // Keep the daemons' logs (the error may point at one) for a look at what went wrong.
        let kept = dir.keep();
        eprintln!("convoy dev: logs kept in {}", kept.display());
    }
    result
}

/// Starts the daemons with their files in `dir`, drives them, and stops them in order.
async fn cluster(args: &DevArgs, dir: &Path) -> Result<()> {
    let harness = Harness::new(&bin_dir_of_current_exe()?, dir)?;
    harness.check_binaries()?;
    let path = |p: PathBuf| p.display().to_string();
    let mut coordinator = harness.coordinator(
        "coordinator",
        &[
            "--listen".into(),
            format!("127.0.0.1:{}", args.port),
            "--data-dir".into(),
            path(dir.join("coordinator")),
        ],
    )?;
    let url = coordinator
        .url()
        .context("the coordinator's ready signal has no address")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args
        .threads_per_rank
        .unwrap_or_else(|| (cores / (args.workers * args.slots) as usize).max(1));
    let mut workers = vec![];
    for i in 0..args.workers {
        let name = format!("dev-worker-{i}");
        workers.push(harness.spawn_worker(
            &name,
            &[
                "--coordinator".into(),
                url.clone(),
                "--name".into(),
                name.clone(),
                "--slots".into(),
                args.slots.to_string(),
                "--threads-per-rank".into(),
                threads.to_string(),
                "--data-dir".into(),
                path(dir.join(&name)),
                "--stop-grace-ms".into(),
                "5000".into(),
            ],
        )?);
    }
    let result = tokio::select! {
        r = drive(&url, args, &mut workers, threads, dir) => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("convoy dev: interrupted; shutting down");
            Ok(())
        }
    };
    // Workers first: they stop their ranks; then the coordinator writes its snapshot.
    for w in &mut workers {
        stop(w);
    }
    stop(&mut coordinator);
    result
}

async fn drive(
    url: &str,
    args: &DevArgs,
    workers: &mut [Daemon],
    threads: usize,
    dir: &Path,
) -> Result<()> {
    // Polled here rather than waited for in a blocking call, so Ctrl-C works meanwhile.
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    for w in workers.iter_mut() {
        while w.poll_ready()?.is_none() {
            if std::time::Instant::now() > deadline {
                bail!(
                    "{} did not register within {READY_TIMEOUT:?}; see {}",
                    w.name(),
                    w.log().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!(
        "convoy dev: coordinator at {url}, {} workers × {} slots ({threads} threads per rank); logs in {}",
        args.workers,
        args.slots,
        dir.display()
    );
    let Some(spec) = &args.spec else {
        eprintln!("convoy dev: ready; CONVOY_COORDINATOR={url} convoy submit SPEC. Ctrl-C stops.");
        std::future::pending::<()>().await;
        return Ok(());
    };
    let mut client = connect(url).await?;
    submit::submit(
        &mut client,
        &SubmitArgs {
            spec: spec.clone(),
            priority: 0,
            max_restarts: 2,
            progress_timeout: None,
            world_size: args.world_size,
            follow: true,
            json: false,
            retry_for: 60.0,
        },
    )
    .await
    .map(|_| ())
}
