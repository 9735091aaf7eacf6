//! Errors of the worker daemon and of a rank process.

use convoy_engine::EngineError;

use crate::collective::RingError;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {status}")]
    Rpc { what: String, status: String },
    /// The coordinator no longer runs this rank's attempt.
    #[error("this attempt was superseded: {0}")]
    Superseded(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("gradient all-reduce: {0}")]
    Ring(#[from] RingError),
}
