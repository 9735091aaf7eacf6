//! `convoy-worker`: the worker daemon. Its settings come from flags, their `CONVOY_*`
//! variables and an optional TOML file (`--config`), in that order of precedence, and are
//! printed at start; everything else is `convoy_worker::run`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};
use convoy_service::{Layers, secret_file};
use convoy_worker::{WorkerConfig, defaults, gpus, run};

/// The flags. Every one is optional here: defaults live in `convoy_worker::defaults` and are
/// applied by the settings layers, which also read the file.
#[derive(Parser)]
#[command(name = "convoy-worker", version, about = "The convoy worker daemon")]
struct Args {
    /// A TOML file of settings (keys are the flags' names with `_`, e.g. `stop_grace_ms`).
    #[arg(long, env = "CONVOY_CONFIG")]
    config: Option<PathBuf>,
    /// The coordinator's address, or the replicas' separated by commas (the daemon and its
    /// ranks follow the leader among them) [default: http://127.0.0.1:7070].
    #[arg(long, env = "CONVOY_COORDINATOR")]
    coordinator: Option<String>,
    /// This worker's name, unique in the cluster [default: the host name].
    #[arg(long, env = "CONVOY_WORKER_NAME")]
    name: Option<String>,
    /// Ranks run at once [default: the number of CPUs].
    #[arg(long, env = "CONVOY_SLOTS")]
    slots: Option<u32>,
    /// Where rank working files go [default: /var/lib/convoy/worker].
    #[arg(long, env = "CONVOY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The address other machines reach this machine's ranks at [default: 127.0.0.1].
    #[arg(long, env = "CONVOY_ADVERTISE_HOST")]
    advertise_host: Option<String>,
    /// Milliseconds between SIGTERM and SIGKILL when ranks are stopped [default: 10000].
    #[arg(long, env = "CONVOY_STOP_GRACE_MS")]
    stop_grace_ms: Option<u64>,
    /// CPU threads per rank [default: the spec's `threads`, else every core].
    #[arg(long, env = "CONVOY_THREADS_PER_RANK")]
    threads_per_rank: Option<usize>,
    /// How long ranks wait for peers, and the longest a peer may be silent in a collective,
    /// in milliseconds [default: 60000].
    #[arg(long, env = "CONVOY_COLLECTIVE_TIMEOUT_MS")]
    collective_timeout_ms: Option<u64>,
    /// How long ranks retry a checkpoint upload while the coordinator is away or failing, in
    /// milliseconds; a job succeeds only once its final checkpoint is stored [default:
    /// 3600000].
    #[arg(long, env = "CONVOY_UPLOAD_RETRY_MS")]
    upload_retry_ms: Option<u64>,
    /// The program that runs one rank [default: convoy-rank next to this binary].
    #[arg(long, env = "CONVOY_RANK_PROGRAM")]
    rank_program: Option<PathBuf>,
    /// Write a JSON ready signal here once the coordinator has accepted this worker (for
    /// process harnesses such as `convoy dev`).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// A file holding the cluster's join token (mode 0600; the coordinator's
    /// --join-token-file). Needed unless the coordinator runs with --insecure.
    #[arg(long, env = "CONVOY_JOIN_TOKEN_FILE")]
    join_token_file: Option<PathBuf>,
    /// The cluster's CA certificate (PEM): connections to the coordinator (the ranks' too)
    /// use TLS and trust it.
    #[arg(long, env = "CONVOY_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// This worker's client certificate (PEM), for a coordinator started with
    /// --require-worker-cert.
    #[arg(long, env = "CONVOY_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM, mode 0600).
    #[arg(long, env = "CONVOY_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Directories jobs may read from, comma-separated: a job whose data or `init_from` file
    /// lies elsewhere fails at once, naming it [default: anywhere the rank's user may read].
    #[arg(long, env = "CONVOY_DATA_ROOTS")]
    data_roots: Option<String>,
    /// The GPUs this worker hands to its ranks, comma-separated as CUDA_VISIBLE_DEVICES names
    /// them (`none` for none): several daemons on one machine each take their own [default:
    /// every GPU the CUDA driver shows this daemon].
    #[arg(long, env = "CONVOY_GPUS")]
    gpus: Option<String>,
    /// The memory (address space, MiB) each CPU rank may use; beyond it allocations fail
    /// [default: no limit].
    #[arg(long, env = "CONVOY_RANK_MEMORY_LIMIT_MB")]
    rank_memory_limit_mb: Option<u64>,
    /// The largest file (MiB) a rank may write [default: no limit].
    #[arg(long, env = "CONVOY_RANK_FILE_SIZE_LIMIT_MB")]
    rank_file_size_limit_mb: Option<u64>,
    /// Start even as root (ranks then run as root: any job may read any file here). Without
    /// it a worker running as root refuses to start.
    #[arg(long, env = "CONVOY_ALLOW_ROOT_RANKS")]
    allow_root_ranks: bool,
}

fn main() -> ExitCode {
    convoy_service::logging::init();
    match configure().and_then(serve) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("convoy-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn configure() -> Result<WorkerConfig> {
    // `Args` is the flags' definition (clap checks each value's type as it parses); the
    // values are read through the layers, which also know the environment's and the file's.
    let matches = Args::command().get_matches();
    let layers = Layers::new(Args::command(), matches, "config")?;
    let exe = std::env::current_exe().context("locating convoy-worker")?;
    let sibling = exe.with_file_name(defaults::RANK_PROGRAM);
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    // Before any address is made a URL: with a CA, every one means https.
    let tls_ca: Option<PathBuf> = layers.optional("tls_ca", None)?.map(|s| s.value);
    let identity = match (
        layers.optional::<PathBuf>("tls_cert", None)?,
        layers.optional::<PathBuf>("tls_key", None)?,
    ) {
        (Some(cert), Some(key)) => {
            secret_file::read(&key.value).context("the TLS key")?;
            Some((cert.value, key.value))
        }
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    anyhow::ensure!(
        identity.is_none() || tls_ca.is_some(),
        "--tls-cert needs --tls-ca (the cluster's CA: a client certificate is presented over TLS)"
    );
    convoy_client::tls::configure(&convoy_client::tls::TlsSettings {
        ca: tls_ca.clone(),
        identity,
    })?;
    let config = WorkerConfig {
        coordinator: convoy_client::urls(
            &layers
                .get("coordinator", convoy_client::DEFAULT_ADDRESS.to_string())?
                .value,
        )?
        .join(","),
        name: layers.get("name", host)?.value,
        slots: layers.get("slots", cpus)?.value,
        gpus: {
            let visible = gpus::visible();
            match layers.optional::<String>("gpus", Some("every GPU the driver shows"))? {
                Some(s) => chosen_gpus(&s.value, &visible)?,
                None => visible,
            }
        },
        data_dir: layers
            .get("data_dir", PathBuf::from(defaults::DATA_DIR))?
            .value,
        advertise_host: layers
            .get("advertise_host", defaults::ADVERTISE_HOST.to_string())?
            .value,
        stop_grace: Duration::from_millis(
            layers.get("stop_grace_ms", defaults::STOP_GRACE_MS)?.value,
        ),
        threads_per_rank: layers
            .optional(
                "threads_per_rank",
                Some("the spec's threads, else every core"),
            )?
            .map(|s| s.value),
        collective_timeout: Duration::from_millis(
            layers
                .get("collective_timeout_ms", defaults::COLLECTIVE_TIMEOUT_MS)?
                .value,
        ),
        upload_retry: Duration::from_millis(
            layers
                .get("upload_retry_ms", defaults::UPLOAD_RETRY_MS)?
                .value,
        ),
        rank_program: layers.get("rank_program", sibling)?.value,
        ready_file: layers
            .optional("ready_file", Some("no ready file"))?
            .map(|s| s.value),
        join_token: layers
            .optional::<PathBuf>(
                "join_token_file",
                Some("none (only a coordinator started with --insecure accepts this worker)"),
            )?
            .map(|s| secret_file::read(&s.value).context("the join token"))
            .transpose()?,
        tls_ca,
        data_roots: match layers.optional::<String>("data_roots", Some("anywhere"))? {
            Some(s) => data_roots(&s.value)?,
            None => vec![],
        },
        rank_memory_limit: layers
            .optional::<u64>("rank_memory_limit_mb", Some("no limit"))?
            .map(|s| s.value.saturating_mul(1 << 20)),
        rank_file_size_limit: layers
            .optional::<u64>("rank_file_size_limit_mb", Some("no limit"))?
            .map(|s| s.value.saturating_mul(1 << 20)),
        allow_root_ranks: layers.get("allow_root_ranks", false)?.value,
    };
    for line in layers.finish()? {
        tracing::info!("setting {line}");
    }
    tracing::info!(
        "GPUs: {} of those the CUDA driver shows {:?}",
        config.gpus.len(),
        config.gpus
    );
    Ok(config)
}

/// `--gpus`: each one of the GPUs the driver shows this daemon, at most once.
fn chosen_gpus(list: &str, visible: &[String]) -> Result<Vec<String>> {
    if list.trim() == "none" {
        return Ok(vec![]);
    }
    let mut chosen: Vec<String> = vec![];
    for g in list.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        anyhow::ensure!(
            visible.iter().any(|v| v == g),
            "--gpus: GPU {g} is not one this daemon sees (the CUDA driver shows {visible:?})"
        );
        anyhow::ensure!(
            !chosen.iter().any(|c| c == g),
            "--gpus: GPU {g} is listed twice"
        );
        chosen.push(g.to_string());
    }
    Ok(chosen)
}

/// `--data-roots`: each an existing directory, made canonical (ranks compare real paths).
fn data_roots(list: &str) -> Result<Vec<PathBuf>> {
    list.split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| std::fs::canonicalize(d).with_context(|| format!("--data-roots: {d}")))
        .collect()
}

#[tokio::main]
async fn serve(config: WorkerConfig) -> Result<()> {
    run(config, convoy_service::signals::terminated()).await?;
    Ok(())
}
