//! The worker daemon's settings, with their defaults defined once (the binary's flags start
//! from these).

use std::path::PathBuf;
use std::time::Duration;

/// Settings a worker has unless told otherwise.
pub mod defaults {
    /// Where rank working files go without `--data-dir`.
    pub const DATA_DIR: &str = "/var/lib/convoy/worker";
    /// The address other machines reach this machine's ranks at.
    pub const ADVERTISE_HOST: &str = "127.0.0.1";
    /// Between SIGTERM and SIGKILL when ranks are stopped.
    pub const STOP_GRACE_MS: u64 = 10_000;
    /// How long ranks wait for peers, and the longest a peer may be silent in a collective.
    pub const COLLECTIVE_TIMEOUT_MS: u64 = 60_000;
    /// How long ranks retry a checkpoint upload while the coordinator is away or failing.
    pub const UPLOAD_RETRY_MS: u64 = convoy_service::launch::DEFAULT_UPLOAD_RETRY_MS;
    /// The rank program, looked for next to the daemon's own binary.
    pub const RANK_PROGRAM: &str = "convoy-rank";
}

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// `http://host:port` of the coordinator.
    pub coordinator: String,
    /// Unique in the cluster; normally the host name.
    pub name: String,
    /// Ranks this worker runs at once.
    pub slots: u32,
    /// The GPUs ranks may be given, as `CUDA_VISIBLE_DEVICES` names them ([`crate::gpus::visible`]).
    pub gpus: Vec<String>,
    /// Each rank's working files (its spec and launch file) go under `ranks/` here.
    pub data_dir: PathBuf,
    /// The address other machines reach this machine's ranks at.
    pub advertise_host: String,
    /// Between SIGTERM and SIGKILL when ranks are stopped.
    pub stop_grace: Duration,
    /// The program that runs one rank, given the rank's launch file (`convoy-rank`).
    pub rank_program: PathBuf,
    /// CPU threads per rank (default: the spec's `threads`, else all cores).
    pub threads_per_rank: Option<usize>,
    /// How long ranks wait for peers, and the longest a peer may be silent in a collective.
    pub collective_timeout: Duration,
    /// How long ranks retry a checkpoint upload while the coordinator is away or failing.
    pub upload_retry: Duration,
    /// Where to write the ready signal once the coordinator has accepted the registration.
    pub ready_file: Option<PathBuf>,
    /// The cluster's join token, which the daemon registers with (`None`: the coordinator
    /// runs without authentication).
    pub join_token: Option<String>,
    /// The CA the daemon's connections trust (TLS); its ranks are told to trust it too.
    pub tls_ca: Option<PathBuf>,
    /// Set: ranks read files only under these directories (canonical).
    pub data_roots: Vec<PathBuf>,
    /// The address space a CPU rank may use (`RLIMIT_AS`, bytes; CUDA ranks are exempt: the
    /// driver reserves far more address space than it uses).
    pub rank_memory_limit: Option<u64>,
    /// The largest file a rank may write (`RLIMIT_FSIZE`, bytes).
    pub rank_file_size_limit: Option<u64>,
    /// Run ranks even though the daemon (and so they) runs as root.
    pub allow_root_ranks: bool,
}
