//! `convoy-coordinator`: the coordinator daemon. Its settings come from flags, their
//! `CONVOY_*` variables and an optional TOML file (`--config`), in that order of precedence,
//! and are printed at start; everything else is `convoy_coordinator::server::run`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use clap::{CommandFactory, Parser};
use convoy_coordinator::identity::AuthConfig;
use convoy_coordinator::server::{
    ClusterSettings, FailStop, RateLimits, ReplicationConfig, ServerConfig, ServerTls, defaults,
    parse_peers, retention_days, run,
};
use convoy_service::{Layers, secret_file};

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
    /// A file holding the bootstrap administrator's token (at least 24 printable
    /// characters, e.g. `openssl rand -hex 32`; mode 0600): the administrator that creates
    /// everyone else's tokens (`convoy admin token create`). The same file on every replica.
    #[arg(long, env = "CONVOY_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// A file holding the cluster's join token, which worker daemons register with (mode
    /// 0600; the same file on every replica and, as their --join-token-file, every worker).
    #[arg(long, env = "CONVOY_JOIN_TOKEN_FILE")]
    join_token_file: Option<PathBuf>,
    /// Serve without authentication: anyone who can reach the port is an administrator, a
    /// worker and every rank. For a machine nobody else can reach, never for a shared one.
    #[arg(long, env = "CONVOY_INSECURE")]
    insecure: bool,
    /// This coordinator's TLS certificate (PEM, with its chain): every port then speaks TLS
    /// only (`convoy tls init` makes a cluster's CA and certificates).
    #[arg(long, env = "CONVOY_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM, mode 0600).
    #[arg(long, env = "CONVOY_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The cluster's CA certificate (PEM): trusted when this coordinator connects to its
    /// replicas, and the authority of workers' client certificates.
    #[arg(long, env = "CONVOY_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Admit only workers that present a client certificate signed by --tls-ca, besides the
    /// join token.
    #[arg(long, env = "CONVOY_REQUIRE_WORKER_CERT")]
    require_worker_cert: bool,
    /// Tokens without TLS: they cross the network in the clear. Only behind a TLS-terminating
    /// proxy or on a network nobody else can reach.
    #[arg(long, env = "CONVOY_PLAINTEXT")]
    plaintext: bool,
    /// Submissions per second a user may make (bursts of ten seconds' worth; administrators
    /// are not limited) [default: 50].
    #[arg(long, env = "CONVOY_SUBMITS_PER_SECOND")]
    submits_per_second: Option<u32>,
    /// Log lines per second a worker may ship (bursts of ten seconds' worth; the rest are
    /// dropped, and the job's log says so) [default: 20000].
    #[arg(long, env = "CONVOY_LOG_LINES_PER_SECOND")]
    log_lines_per_second: Option<u32>,
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
    let admin_token_file: Option<PathBuf> =
        layers.optional("admin_token_file", None)?.map(|s| s.value);
    let join_token_file: Option<PathBuf> =
        layers.optional("join_token_file", None)?.map(|s| s.value);
    let insecure = layers.get("insecure", false)?.value;
    let defaults = RateLimits::default();
    config.rate_limits = RateLimits {
        submits_per_second: layers
            .get("submits_per_second", defaults.submits_per_second)?
            .value,
        log_lines_per_second: layers
            .get("log_lines_per_second", defaults.log_lines_per_second)?
            .value,
    };
    let tls = TlsFlags {
        cert: layers.optional("tls_cert", None)?.map(|s| s.value),
        key: layers.optional("tls_key", None)?.map(|s| s.value),
        ca: layers.optional("tls_ca", None)?.map(|s| s.value),
        require_worker_cert: layers.get("require_worker_cert", false)?.value,
        plaintext: layers.get("plaintext", false)?.value,
    };
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
    config.auth = auth(admin_token_file, join_token_file, insecure)?;
    config.auth.require_worker_cert = tls.require_worker_cert;
    config.tls = server_tls(&tls, insecure, peers.is_some())?;
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

/// Who may call: both tokens, or `--insecure` said out loud.
fn auth(admin: Option<PathBuf>, join: Option<PathBuf>, insecure: bool) -> Result<AuthConfig> {
    match (admin, join, insecure) {
        (None, None, true) => {
            tracing::warn!(
                "--insecure: no authentication; anyone who can reach this coordinator is an                  administrator, a worker and every rank"
            );
            Ok(AuthConfig::insecure())
        }
        (_, _, true) => anyhow::bail!(
            "--insecure and token files together: choose one (tokens, for anything but a              machine nobody else can reach)"
        ),
        (Some(admin), Some(join), false) => {
            let admin = secret_file::read(&admin)?;
            let join = secret_file::read(&join)?;
            AuthConfig::with_tokens(&admin, &join).map_err(anyhow::Error::msg)
        }
        _ => anyhow::bail!(
            "the coordinator needs --admin-token-file and --join-token-file (see              deploy/README.md), or --insecure to let anyone who reaches it do anything"
        ),
    }
}

struct TlsFlags {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    require_worker_cert: bool,
    plaintext: bool,
}

/// What this coordinator serves TLS with, if anything; with tokens, TLS or `--plaintext`
/// said out loud. Its own connections (to its replicas) trust `--tls-ca`.
fn server_tls(f: &TlsFlags, insecure: bool, replicated: bool) -> Result<Option<ServerTls>> {
    let read =
        |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let served = match (&f.cert, &f.key) {
        (Some(cert), Some(key)) => Some(ServerTls {
            cert_pem: read(cert)?,
            key_pem: secret_file::read(key)?.into_bytes(),
            client_ca_pem: f.ca.as_ref().map(read).transpose()?,
        }),
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    ensure!(
        !(f.plaintext && served.is_some()),
        "--plaintext and --tls-cert together: choose one"
    );
    if served.is_none() && !insecure && !f.plaintext {
        anyhow::bail!(
            "the coordinator needs --tls-cert and --tls-key (`convoy tls init` makes a              cluster's; see deploy/README.md), or --plaintext to send tokens in the clear"
        );
    }
    if f.plaintext {
        tracing::warn!("--plaintext: tokens and job data cross the network unencrypted");
    }
    ensure!(
        !f.require_worker_cert || (served.is_some() && f.ca.is_some()),
        "--require-worker-cert needs TLS (--tls-cert, --tls-key) and --tls-ca, the authority          of the workers' certificates"
    );
    ensure!(
        !(replicated && served.is_some() && f.ca.is_none()),
        "replicas connect to each other over TLS: give --tls-ca, the CA that signed their          certificates"
    );
    if served.is_some() {
        convoy_client::tls::configure(&convoy_client::tls::TlsSettings {
            ca: f.ca.clone(),
            identity: None,
        })?;
    }
    Ok(served)
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
    let secret = secret_file::read(&secret_file).context("the cluster secret")?;
    let r =
        ReplicationConfig::new(node_id, members, cluster_id, secret).map_err(anyhow::Error::msg)?;
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
