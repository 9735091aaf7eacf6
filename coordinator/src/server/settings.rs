//! The coordinator daemon's settings, with their defaults defined here once (the binary's
//! flags, `convoy dev` and the tests all start from these).
//!
//! Two kinds: the daemon's own ([`ServerConfig`]: where its data lives, how often it ticks
//! and asks for heartbeats), which simply apply to this process; and the cluster's
//! ([`ClusterSettings`]), which are part of the replicated state because they change what the
//! state machine decides. A cluster setting given at start that differs from the stored one
//! is applied through a logged [`Command::Configure`], so a change is recorded, survives
//! restarts and is never silently ignored; one not given keeps the stored value. A new
//! cluster stores its settings at its first start.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::CoordinatorError;
use crate::identity::AuthConfig;
use crate::log::CommandLog;
use crate::logged_state::LoggedState;
use crate::model::Millis;
use crate::server::fail_stop::FailStop;
pub use crate::server::limits::RateLimits;
use crate::state::{ClusterConfig, Command};

/// Settings the coordinator has unless told otherwise.
pub mod defaults {
    pub const DATA_DIR: &str = "/var/lib/convoy/coordinator";
    pub const HEARTBEAT_INTERVAL_MS: u64 = 1_000;
    pub const LOG_LINES_PER_JOB: u64 = 10_000;
    pub const METRICS_PER_JOB: u64 = 100_000;
    /// Days a finished job's logs and metrics are kept (0: for ever).
    pub const RECORDS_RETENTION_DAYS: u64 = 30;
    pub const TICK_MS: u64 = 100;
    pub const SNAPSHOT_EVERY: u64 = 4096;
    /// The largest request accepted (a spec, a batch of log lines, a checkpoint chunk).
    pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
}

/// Everything the coordinator daemon needs besides its listener.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Holds the command log (`log/`), the logs and metrics store (`records/`) and the
    /// checkpoint store (`checkpoints/`).
    pub data_dir: PathBuf,
    /// The replicated settings given for this start (see the module doc).
    pub cluster: ClusterSettings,
    /// Workers are told to heartbeat this often.
    pub heartbeat_interval: Duration,
    pub tick: Duration,
    pub log_lines_per_job: u64,
    pub metrics_per_job: u64,
    /// A finished job's logs and metrics are removed this long after it ended (`None`: never);
    /// the job itself stays listed until `convoy job delete`.
    pub records_retention: Option<Duration>,
    /// A snapshot is written every this many commands.
    pub snapshot_every: u64,
    pub max_message_bytes: usize,
    /// Where to write the ready signal once the coordinator serves.
    pub ready_file: Option<PathBuf>,
    /// What a storage failure does: exit the process (the daemon) or return from `run`.
    pub fail_stop: FailStop,
    /// Set: this coordinator is one member of a replicated cluster.
    pub replication: Option<ReplicationConfig>,
    /// Who may call it. The library's default is [`AuthConfig::insecure`] (tests and
    /// embeddings choose); the daemon refuses to start without tokens unless `--insecure`.
    pub auth: AuthConfig,
    /// Set: every port speaks TLS only.
    pub tls: Option<ServerTls>,
    pub rate_limits: RateLimits,
}

/// The coordinator's TLS identity (PEM), and the CA whose client certificates it verifies.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Set: a client certificate, when presented, must be signed by this CA; a worker must
    /// present one to register if [`AuthConfig::require_worker_cert`].
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ServerTls")
            .field("client_ca", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// A member of a replicated coordinator (`--node-id`, `--peers`, `--cluster-id`,
/// `--cluster-secret-file`).
#[derive(Clone)]
pub struct ReplicationConfig {
    pub node_id: u64,
    /// Every member's address, this one's included: the one port serves clients, workers
    /// and peers.
    pub members: BTreeMap<u64, String>,
    /// Names the cluster: members of another cluster are refused.
    pub cluster_id: String,
    /// Presented to peers and required of them.
    pub secret: String,
    /// A new member of a running cluster (`--join`): its empty storage waits for the
    /// leader's state instead of starting a new cluster of `members`.
    pub join: bool,
}

impl std::fmt::Debug for ReplicationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConfig")
            .field("node_id", &self.node_id)
            .field("members", &self.members)
            .field("cluster_id", &self.cluster_id)
            .finish_non_exhaustive()
    }
}

impl ReplicationConfig {
    /// Checks that the settings make a cluster this member belongs to.
    pub fn new(
        node_id: u64,
        members: BTreeMap<u64, String>,
        cluster_id: String,
        secret: String,
    ) -> Result<ReplicationConfig, String> {
        if !members.contains_key(&node_id) {
            return Err(format!(
                "--node-id {node_id} is not in --peers (members {})",
                members
                    .keys()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if cluster_id.trim().is_empty() {
            return Err("--cluster-id is empty".into());
        }
        if secret.len() < 16 || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the cluster secret must be at least 16 printable ASCII characters without \
                 spaces (e.g. `openssl rand -hex 32`)"
                    .into(),
            );
        }
        Ok(ReplicationConfig {
            node_id,
            members,
            cluster_id,
            secret,
            join: false,
        })
    }
}

/// Parses `--peers`: `1=host:port,2=host:port,3=host:port`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut members = BTreeMap::new();
    let mut addresses = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("--peers item {item:?} is not id=host:port"))?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("--peers item {item:?}: the id must be a number above 0"))?;
        let addr = addr.trim().to_string();
        if addr.is_empty() {
            return Err(format!("--peers item {item:?} has no address"));
        }
        if let Some(other) = addresses.insert(addr.clone(), id) {
            return Err(format!("--peers gives {addr} to both {other} and {id}"));
        }
        if members.insert(id, addr).is_some() {
            return Err(format!("--peers names member {id} twice"));
        }
    }
    if members.is_empty() {
        return Err("--peers is empty".into());
    }
    Ok(members)
}

impl ServerConfig {
    /// The defaults, with the data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            cluster: ClusterSettings::default(),
            heartbeat_interval: Duration::from_millis(defaults::HEARTBEAT_INTERVAL_MS),
            tick: Duration::from_millis(defaults::TICK_MS),
            log_lines_per_job: defaults::LOG_LINES_PER_JOB,
            metrics_per_job: defaults::METRICS_PER_JOB,
            records_retention: retention_days(defaults::RECORDS_RETENTION_DAYS),
            snapshot_every: defaults::SNAPSHOT_EVERY,
            max_message_bytes: defaults::MAX_MESSAGE_BYTES,
            ready_file: None,
            fail_stop: FailStop::returning(),
            replication: None,
            auth: AuthConfig::insecure(),
            tls: None,
            rate_limits: RateLimits::default(),
        }
    }
}

/// `days` as a retention period; 0 keeps records for ever.
pub fn retention_days(days: u64) -> Option<Duration> {
    (days > 0).then(|| Duration::from_secs(days.saturating_mul(24 * 60 * 60)))
}

/// Replicated settings given for this start; `None`: keep what the cluster has stored (the
/// [`ClusterConfig`] default for a new data directory).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterSettings {
    /// A worker silent for longer is lost. A job whose rank failed is held as long before it
    /// is placed again (see [`ClusterConfig::restart_delay`]), so this sets both.
    pub heartbeat_timeout: Option<Millis>,
    /// Rank failures in a row after which a worker is cordoned (0: never).
    pub auto_cordon_after: Option<u32>,
}

impl ClusterSettings {
    /// `stored` with the given settings applied.
    pub fn applied_to(&self, stored: &ClusterConfig) -> ClusterConfig {
        let mut c = stored.clone();
        if let Some(t) = self.heartbeat_timeout {
            c.heartbeat_timeout = t;
            c.restart_delay = t;
        }
        if let Some(n) = self.auto_cordon_after {
            c.auto_cordon_after = n;
        }
        c
    }
}

/// Brings the recovered state's settings in line with `given`, through a logged command when
/// anything changes, and says what is in force and why.
pub(crate) fn apply_cluster_settings<L: CommandLog>(
    core: &mut LoggedState<L>,
    given: &ClusterSettings,
) -> Result<(), CoordinatorError> {
    let stored = core.state().config.clone();
    let wanted = given.applied_to(&stored);
    let fresh = core.applied() == 0;
    let settings = [
        (
            "heartbeat_timeout_ms",
            given.heartbeat_timeout.is_some(),
            wanted.heartbeat_timeout,
            stored.heartbeat_timeout,
        ),
        (
            "auto_cordon_after",
            given.auto_cordon_after.is_some(),
            u64::from(wanted.auto_cordon_after),
            u64::from(stored.auto_cordon_after),
        ),
    ];
    for (name, is_given, value, before) in settings {
        let source = match (is_given, value != before, fresh) {
            (true, _, true) => "given",
            (true, true, false) => "given; replaces the stored value",
            (true, false, false) => "given; as stored",
            (false, _, true) => "default",
            (false, _, false) => "stored with the cluster state",
        };
        tracing::info!("setting {name} = {value} ({source})");
    }
    // A new cluster records its settings too: they are the cluster's from now on, even if a
    // later release changes the defaults.
    if wanted != stored || fresh {
        core.execute(&Command::Configure(wanted))?;
    }
    Ok(())
}
