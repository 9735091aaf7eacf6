//! `convoy dev`: a real coordinator and N real worker processes on localhost with a temporary
//! data directory (like `nomad agent -dev`), optionally running one job to the end.
//!
//! The daemons are started by `convoy_harness` (the same code the benchmarks and the tests
//! use) in their own process groups, so Ctrl-C reaches only this command, which then (as on
//! SIGTERM) stops them in order (workers first, so their ranks are stopped cleanly) and
//! removes the directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use convoy_harness::{Daemon, Harness, READY_TIMEOUT, bin_dir_of_current_exe};

use crate::cluster::submit::{self, SubmitArgs};
use crate::cluster::tls;
use crate::display::say_err;
use convoy_service::secret_file;

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
    /// The coordinator's port (0: any free port); replicas take this one and the next ones.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Coordinator replicas: 1, or an odd number (3 survives the loss of any one; try
    /// SIGKILLing the leader that `convoy coordinators` names).
    #[arg(long, default_value_t = 1)]
    pub coordinators: u16,
    /// Run without authentication and TLS: anyone who can reach the ports may do anything.
    /// By default the cluster has a throwaway CA and certificates, an administrator token and
    /// a join token, in its directory.
    #[arg(long)]
    pub insecure: bool,
}

/// What a dev cluster is secured with, in its directory: tokens (mode 0600) and a
/// throwaway CA with its certificates.
struct Security {
    admin: PathBuf,
    join: PathBuf,
    pki: tls::Pki,
}

impl Security {
    /// Also makes this process's own connections trust the throwaway CA.
    fn create(dir: &Path) -> Result<Security> {
        let s = Security {
            admin: dir.join("admin.token"),
            join: dir.join("join.token"),
            pki: tls::init(&dir.join("tls"), &[])?,
        };
        for path in [&s.admin, &s.join] {
            secret_file::write(path, &random_secret())?;
        }
        convoy_client::tls::configure(&convoy_client::tls::TlsSettings {
            ca: Some(s.pki.ca.clone()),
            identity: None,
        })?;
        Ok(s)
    }

    fn coordinator_args(security: Option<&Security>) -> Vec<String> {
        let Some(s) = security else {
            return vec!["--insecure".into()];
        };
        [
            ("--admin-token-file", &s.admin),
            ("--join-token-file", &s.join),
            ("--tls-cert", &s.pki.coordinator_cert),
            ("--tls-key", &s.pki.coordinator_key),
            ("--tls-ca", &s.pki.ca),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
        .collect()
    }

    fn worker_args(&self) -> Vec<String> {
        [
            ("--join-token-file", &self.join),
            ("--tls-ca", &self.pki.ca),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
        .collect()
    }
}

fn random_secret() -> String {
    format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    )
}

/// The GPUs each worker hands out (its `--gpus`): this machine's, as `CUDA_VISIBLE_DEVICES`
/// names them, dealt round-robin, so that workers of one machine never give two ranks the same
/// GPU. `None` for every worker when there is no GPU (the workers then see none themselves).
fn gpu_shares(workers: u32) -> Vec<Option<String>> {
    let n = convoy_kernels::cuda::device_count();
    if n == 0 {
        return vec![None; workers as usize];
    }
    let names = convoy_service::gpus::visible_names(n);
    (0..workers as usize)
        .map(|i| {
            let mine: Vec<&str> = names
                .iter()
                .skip(i)
                .step_by(workers as usize)
                .map(String::as_str)
                .collect();
            Some(if mine.is_empty() {
                "none".to_string()
            } else {
                mine.join(",")
            })
        })
        .collect()
}

/// How long each daemon gets to stop on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Stops a daemon, saying so when it had to be killed.
fn stop(d: &mut Daemon) {
    if !d.stop(STOP_GRACE) {
        say_err!("{} did not stop within {STOP_GRACE:?}; killed it", d.name());
    }
}

pub async fn run(args: DevArgs) -> Result<()> {
    if args.workers == 0 || args.slots == 0 {
        bail!("--workers and --slots must be at least 1");
    }
    if args.coordinators.is_multiple_of(2) {
        bail!(
            "--coordinators {}: 1, or an odd number (a majority of them must be up)",
            args.coordinators
        );
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
        say_err!("convoy dev: logs kept in {}", kept.display());
    }
    result
}

/// Starts the daemons with their files in `dir`, drives them, and stops them in order.
async fn cluster(args: &DevArgs, dir: &Path) -> Result<()> {
    let harness = Harness::new(&bin_dir_of_current_exe()?, dir)?;
    harness.check_binaries()?;
    let security = if args.insecure {
        say_err!(
            "convoy dev: --insecure: no authentication and no TLS; anyone who reaches the \
             ports may do anything"
        );
        None
    } else {
        Some(Security::create(dir)?)
    };
    let path = |p: PathBuf| p.display().to_string();
    let (mut coordinators, url) = if args.coordinators == 1 {
        let mut flags = vec![
            "--listen".into(),
            format!("127.0.0.1:{}", args.port),
            "--data-dir".into(),
            path(dir.join("coordinator")),
        ];
        flags.extend(Security::coordinator_args(security.as_ref()));
        let c = harness.coordinator("coordinator", &flags)?;
        let url = c
            .url()
            .context("the coordinator's ready signal has no address")?;
        (vec![c], url)
    } else {
        replicas(&harness, args, dir, security.as_ref())?
    };
    if convoy_harness::running_as_root() {
        say_err!("convoy dev: running as root, so the ranks run as root too");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args
        .threads_per_rank
        .unwrap_or_else(|| (cores / (args.workers * args.slots) as usize).max(1));
    let gpu_shares = gpu_shares(args.workers);
    let mut workers = vec![];
    for i in 0..args.workers {
        let name = format!("dev-worker-{i}");
        let mut flags: Vec<String> = vec![
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
        ];
        if let Some(s) = &security {
            flags.extend(s.worker_args());
        }
        if convoy_harness::running_as_root() {
            // A developer's own machine: said, not refused.
            flags.push("--allow-root-ranks".into());
        }
        if let Some(share) = &gpu_shares[i as usize] {
            flags.extend(["--gpus".into(), share.clone()]);
        }
        workers.push(harness.spawn_worker(&name, &flags)?);
    }
    let result = tokio::select! {
        r = drive(&url, args, &mut workers, threads, dir, security.as_ref()) => r,
        // Ctrl-C, or SIGTERM from whatever runs it (a service manager, `timeout`): the
        // daemons run in process groups of their own and would outlive it otherwise.
        _ = convoy_service::signals::terminated() => {
            say_err!("convoy dev: interrupted; shutting down");
            Ok(())
        }
    };
    // Workers first: they stop their ranks; then the coordinator writes its snapshot.
    for w in &mut workers {
        stop(w);
    }
    for c in &mut coordinators {
        stop(c);
    }
    result
}

/// `args.coordinators` replicas on consecutive ports from `args.port` (or free ones), with a
/// fresh secret; the address list clients are given.
fn replicas(
    harness: &Harness,
    args: &DevArgs,
    dir: &Path,
    security: Option<&Security>,
) -> Result<(Vec<Daemon>, String)> {
    let n = usize::from(args.coordinators);
    let ports: Vec<u16> = if args.port == 0 {
        // Ports free now: the replicas must know each other's before they start.
        (0..n)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
                    .context("finding a free port")
            })
            .collect::<Result<_>>()?
    } else {
        (0..n)
            .map(|i| args.port.checked_add(i as u16))
            .collect::<Option<_>>()
            .context("--port: the replicas' ports run past 65535")?
    };
    let secret = dir.join("cluster-secret");
    secret_file::write(&secret, &random_secret())?;
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect();
    let mut daemons = vec![];
    for (i, port) in ports.iter().enumerate() {
        let name = format!("coordinator-{}", i + 1);
        let mut flags = Security::coordinator_args(security);
        flags.extend([
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            dir.join(&name).display().to_string(),
            "--node-id".into(),
            (i + 1).to_string(),
            "--peers".into(),
            peers.join(","),
            "--cluster-id".into(),
            "convoy-dev".into(),
            "--cluster-secret-file".into(),
            secret.display().to_string(),
        ]);
        daemons.push(harness.coordinator(&name, &flags)?);
    }
    let url = ports
        .iter()
        .map(|p| convoy_client::url(&format!("127.0.0.1:{p}")))
        .collect::<Vec<_>>()
        .join(",");
    Ok((daemons, url))
}

async fn drive(
    url: &str,
    args: &DevArgs,
    workers: &mut [Daemon],
    threads: usize,
    dir: &Path,
    security: Option<&Security>,
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
    say_err!(
        "convoy dev: coordinator(s) at {url}, {} workers × {} slots ({threads} threads per rank); logs in {}",
        args.workers,
        args.slots,
        dir.display()
    );
    let Some(spec) = &args.spec else {
        let token = security.map_or(String::new(), |s| {
            format!(
                " CONVOY_TOKEN_FILE={} CONVOY_TLS_CA={}",
                s.admin.display(),
                s.pki.ca.display()
            )
        });
        say_err!(
            "convoy dev: ready; CONVOY_COORDINATOR={url}{token} convoy submit SPEC. Ctrl-C stops."
        );
        std::future::pending::<()>().await;
        return Ok(());
    };
    let channel = convoy_client::connect(url).await?;
    if let Some(s) = security {
        channel.set_credential(&secret_file::read(&s.admin)?)?;
    }
    let mut client = convoy_client::client_api(channel);
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
