//! `convoy-coordinator`: the coordinator daemon. Its settings come from flags, their
//! `CONVOY_*` variables and an optional TOML file (`--config`), in that order of precedence,
//! and are printed at start; everything else is `convoy_coordinator::server::run`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use clap::{CommandFactory, Parser};
use convoy_coordinator::server::{
    ClusterSettings, FailStop, ReplicationConfig, ServerConfig, defaults, parse_peers,
    retention_days, run,
};
use convoy_service::Layers;

/// The flags. Every one is optional here: the defaults live in
/// `convoy_coordinator::server::defaults` and are applied by the settings layers.
#[derive(Parser)]
#[command(
    name = "convoy-coordinator",
    version,
    about = "The convoy coordinator daemon"
)]
struct Args {
    /// A TOML file of settings (keys are the flags' names with `_`, e.g. `data_dir`).
    #[arg(long, env = "CONVOY_CONFIG")]
    config: Option<PathBuf>,
    /// Address to serve the client and worker APIs on (port 0: any free port; the address is
    /// printed on stdout and in the ready file) [default: 127.0.0.1:7070].
    #[arg(long, env = "CONVOY_LISTEN")]
    listen: Option<String>,
    /// Where the command log, snapshots, logs, metrics and checkpoints are kept
    /// [default: /var/lib/convoy/coordinator].
    #[arg(long, env = "CONVOY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A worker silent for longer than this is lost. Stored with the cluster state: a value
    /// given here replaces the stored one [default: the stored value; 5000 for a new cluster].
    #[arg(long, env = "CONVOY_HEARTBEAT_TIMEOUT_MS")]
    heartbeat_timeout_ms: Option<u64>,
    /// How often workers are told to heartbeat [default: 1000].
    #[arg(long, env = "CONVOY_HEARTBEAT_INTERVAL_MS")]
    heartbeat_interval_ms: Option<u64>,
    /// Rank failures in a row after which a worker is cordoned (0: never). Stored with the
    /// cluster state like the heartbeat timeout [default: the stored value; 3 for a new
    /// cluster].
    #[arg(long, env = "CONVOY_AUTO_CORDON_AFTER")]
    auto_cordon_after: Option<u32>,
    /// Log lines kept per job (the oldest go first) [default: 10000].
    #[arg(long, env = "CONVOY_LOG_LINES_PER_JOB")]
    log_lines_per_job: Option<u64>,
    /// Days a finished job's logs and metrics are kept, 0 for ever [default: 30].
    #[arg(long, env = "CONVOY_RECORDS_RETENTION_DAYS")]
    records_retention_days: Option<u64>,
    /// This coordinator's id among its replicas (replicated clusters only; with --peers).
    #[arg(long, env = "CONVOY_NODE_ID")]
    node_id: Option<u64>,
    /// Every replica of a replicated coordinator, this one included, as
    /// `1=host:port,2=host:port,3=host:port` (the same list on every replica; each address is
    /// the one its --listen serves). Without it the coordinator runs alone. Once members
    /// have been added or removed, the list in the replicated log is used instead.
    #[arg(long, env = "CONVOY_PEERS")]
    peers: Option<String>,
    /// Join a running replicated cluster as a new member (add it first with `convoy
    /// coordinators --add ID=host:port`): an empty data directory waits for the leader's
    /// state instead of starting a new cluster. No effect once the member holds state.
    #[arg(long, env = "CONVOY_JOIN")]
    join: bool,
    /// Names the replicated cluster; replicas of another cluster are refused.
    #[arg(long, env = "CONVOY_CLUSTER_ID")]
    cluster_id: Option<String>,
    /// A file holding the secret every replica presents to the others (at least 16
    /// printable characters; e.g. `openssl rand -hex 32`). Kept in a file, not a flag, so it
    /// never shows in a process listing.
    #[arg(long, env = "CONVOY_CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// Write a JSON ready signal (pid, bound address) here once the coordinator serves (for
    /// process harnesses such as `convoy dev`).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    convoy_service::logging::init();
    match configure().and_then(|(listen, config)| serve(listen, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("convoy-coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn configure() -> Result<(String, ServerConfig)> {
    // `Args` is the flags' definition (clap checks each value's type as it parses); the
    // values are read through the layers, which also know the environment's and the file's.
    let matches = Args::command().get_matches();
    let layers = Layers::new(Args::command(), matches, "config")?;
    let listen = layers
        .get("listen", convoy_client::DEFAULT_LISTEN.to_string())?
        .value;
    let mut config = ServerConfig::new(
        layers
            .get("data_dir", PathBuf::from(defaults::DATA_DIR))?
            .value,
    );
    // A storage failure ends the process at once, with one line (see FailStop).
    config.fail_stop = FailStop::exiting();
    // The cluster settings are reported once the stored ones are known (server::run).
    config.cluster = ClusterSettings {
        heartbeat_timeout: layers
            .optional("heartbeat_timeout_ms", None)?
            .map(|s| s.value),
        auto_cordon_after: layers.optional("auto_cordon_after", None)?.map(|s| s.value),
    };
    config.heartbeat_interval = Duration::from_millis(
        layers
            .get("heartbeat_interval_ms", defaults::HEARTBEAT_INTERVAL_MS)?
            .value,
    );
    config.log_lines_per_job = layers
        .get("log_lines_per_job", defaults::LOG_LINES_PER_JOB)?
        .value;
    config.records_retention = retention_days(
        layers
            .get("records_retention_days", defaults::RECORDS_RETENTION_DAYS)?
            .value,
    );
    config.ready_file = layers
        .optional("ready_file", Some("no ready file"))?
        .map(|s| s.value);
    let peers: Option<String> = layers
        .optional("peers", Some("a single coordinator"))?
        .map(|s| s.value);
    let node_id: Option<u64> = layers.optional("node_id", None)?.map(|s| s.value);
    let cluster_id: Option<String> = layers.optional("cluster_id", None)?.map(|s| s.value);
    let secret_file: Option<PathBuf> = layers
        .optional("cluster_secret_file", None)?
        .map(|s| s.value);
    let join = layers.get("join", false)?.value;
    for line in layers.finish()? {
        tracing::info!("setting {line}");
    }
    ensure!(
        config.cluster.heartbeat_timeout != Some(0),
        "heartbeat_timeout_ms = 0: every worker would be lost at once"
    );
    ensure!(
        config.heartbeat_interval >= Duration::from_millis(10),
        "heartbeat_interval_ms = {}: at least 10",
        config.heartbeat_interval.as_millis()
    );
    config.replication = replication(peers, node_id, cluster_id, secret_file)?;
    match &mut config.replication {
        Some(r) => r.join = join,
        None => ensure!(
            !join,
            "--join needs --peers (the running cluster's members)"
        ),
    }
    Ok((listen, config))
}

/// The replication settings: all of them with --peers, none without.
fn replication(
    peers: Option<String>,
    node_id: Option<u64>,
    cluster_id: Option<String>,
    secret_file: Option<PathBuf>,
) -> Result<Option<ReplicationConfig>> {
    let Some(peers) = peers else {
        ensure!(
            node_id.is_none() && cluster_id.is_none() && secret_file.is_none(),
            "--node-id, --cluster-id and --cluster-secret-file need --peers (the replicas)"
        );
        return Ok(None);
    };
    let members = parse_peers(&peers).map_err(anyhow::Error::msg)?;
    let node_id = node_id.context("--peers needs --node-id (this replica's id in the list)")?;
    let cluster_id = cluster_id.context("--peers needs --cluster-id")?;
    let secret_file =
        secret_file.context("--peers needs --cluster-secret-file (the replicas' shared secret)")?;
    let secret = std::fs::read_to_string(&secret_file)
        .with_context(|| format!("cannot read the cluster secret {}", secret_file.display()))?;
    let r = ReplicationConfig::new(node_id, members, cluster_id, secret.trim().to_string())
        .map_err(anyhow::Error::msg)?;
    Ok(Some(r))
}

#[tokio::main]
async fn serve(listen: String, config: ServerConfig) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    run(listener, config, convoy_service::signals::terminated()).await?;
    Ok(())
}
