//! What convoy's daemons (`convoy-coordinator`, `convoy-worker`) and the processes they start
//! share, so each is written once:
//!
//! * [`settings`]: a daemon's configuration from flags, environment and a TOML file, with one
//!   precedence rule and a record of where each value came from, printed at start;
//! * [`logging`]: daemon logs on stderr (the journal under systemd);
//! * [`signals`]: the shutdown signal;
//! * [`ready`]: the machine-readable ready signal a process harness waits for (and systemd's
//!   `READY=1`);
//! * [`launch`]: the file a worker daemon writes to start one rank, the rank's whole
//!   configuration;
//! * [`secret_file`]: files holding tokens and secrets, private to their owner;
//! * [`gpus`]: the names ranks are given their GPUs by.

pub mod gpus;
pub mod launch;
pub mod logging;
pub mod ready;
pub mod secret_file;
pub mod settings;
pub mod signals;

pub use launch::{EXIT_JOB_ERROR, EXIT_PEER_FAILED, RankLaunch};
pub use ready::ReadySignal;
pub use settings::{Layers, Setting, SettingsError, Source};

/// This build's version, which daemons compare to refuse a worker of another release.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
