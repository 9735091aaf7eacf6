//! `convoy dev`: a real coordinator and N real worker processes on localhost with a temporary
//! data directory (like `nomad agent -dev`), optionally running one job to the end.
//!
//! The daemons run in their own process groups, so Ctrl-C reaches only this command, which
//! then stops them in order (workers first, so their ranks are stopped cleanly) and removes
//! the directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use convoy_proto::v1 as pb;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;

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

/// A daemon child that is stopped (SIGTERM, then SIGKILL) when dropped.
struct Daemon {
    name: String,
    child: Child,
}

impl Daemon {
    fn stop(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop within {grace:?}; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(15));
    }
}

/// The daemons' binaries sit next to this one (`cargo build` puts them there).
fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the convoy binary")?;
    let path = exe
        .parent()
        .map(|d| d.join(name))
        .ok_or_else(|| anyhow!("the convoy binary has no directory"))?;
    if !path.exists() {
        bail!(
            "{} not found next to {}: build all binaries with `cargo build --release`",
            name,
            exe.display()
        );
    }
    Ok(path)
}

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File> {
    let p = dir.join(format!("{name}.log"));
    std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))
}

fn start_coordinator(dir: &Path, port: u16) -> Result<(Daemon, String)> {
    let mut child = Command::new(sibling("convoy-coordinator")?)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.join("coordinator"))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file(dir, "coordinator")?)
        .process_group(0)
        .spawn()
        .context("starting convoy-coordinator")?;
    let stdout = child.stdout.take().context("coordinator stdout")?;
    let daemon = Daemon {
        name: "convoy-coordinator".into(),
        child,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(first)) = lines.next() {
            let _ = tx.send(first);
        }
        for _ in lines {} // keep draining so the daemon never blocks on a full pipe
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).map_err(|_| {
        anyhow!(
            "convoy-coordinator did not start; see {}",
            dir.join("coordinator.log").display()
        )
    })?;
    let addr = line
        .strip_prefix("listening on ")
        .ok_or_else(|| anyhow!("unexpected first line from convoy-coordinator: {line:?}"))?;
    Ok((daemon, format!("http://{addr}")))
}

fn start_worker(dir: &Path, url: &str, i: u32, slots: u32, threads: usize) -> Result<Daemon> {
    let name = format!("dev-worker-{i}");
    let child = Command::new(sibling("convoy-worker")?)
        .args(["--coordinator", url, "--name", &name])
        .arg("--slots")
        .arg(slots.to_string())
        .arg("--threads-per-rank")
        .arg(threads.to_string())
        .arg("--data-dir")
        .arg(dir.join(&name))
        .arg("--stop-grace-ms")
        .arg("5000")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log_file(dir, &name)?)
        .stderr(log_file(dir, &format!("{name}.err"))?)
        .process_group(0)
        .spawn()
        .context("starting convoy-worker")?;
    Ok(Daemon { name, child })
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
    let (mut coordinator, url) = start_coordinator(dir.path(), args.port)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args
        .threads_per_rank
        .unwrap_or_else(|| (cores / (args.workers * args.slots) as usize).max(1));
    let mut workers = vec![];
    for i in 0..args.workers {
        workers.push(start_worker(dir.path(), &url, i, args.slots, threads)?);
    }
    eprintln!(
        "convoy dev: coordinator at {url}, {} workers × {} slots ({threads} threads per rank); logs in {}",
        args.workers,
        args.slots,
        dir.path().display()
    );
    let result = tokio::select! {
        r = drive(&url, &args) => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("convoy dev: interrupted; shutting down");
            Ok(())
        }
    };
    // Workers first: they stop their ranks; then the coordinator writes its snapshot.
    for w in &mut workers {
        w.stop(Duration::from_secs(15));
    }
    coordinator.stop(Duration::from_secs(15));
    if result.is_err() {
        // Keep the daemons' logs for a look at what went wrong.
        let kept = dir.keep();
        eprintln!("convoy dev: logs kept in {}", kept.display());
    }
    result
}

async fn drive(url: &str, args: &DevArgs) -> Result<()> {
    let mut client = connect(url).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = client
            .cluster_status(pb::ClusterStatusRequest {})
            .await
            .map_err(crate::cluster::rpc)?
            .into_inner();
        if s.workers_alive >= args.workers {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {} workers registered within 30 s",
                s.workers_alive,
                args.workers
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(spec) = &args.spec else {
        eprintln!("convoy dev: ready; CONVOY_COORDINATOR={url} convoy submit SPEC. Ctrl-C stops.");
        std::future::pending::<()>().await;
        return Ok(());
    };
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
        },
    )
    .await
    .map(|_| ())
}
