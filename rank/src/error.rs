//! Errors of a rank process. Each is the one line the rank prints before it exits non-zero,
//! which the daemon ships and the coordinator puts in the job's failure reason.

use convoy_client::ClientError;
use convoy_collective::CollectiveError;
use convoy_engine::EngineError;
use convoy_engine::spec::SpecError;
use convoy_service::launch::LaunchError;

#[derive(Debug, thiserror::Error)]
pub enum RankError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {status}")]
    Rpc { what: String, status: String },
    /// The job's last checkpoint could not be stored: the job must not succeed without it.
    #[error("the final checkpoint (step {step}) could not be stored: {msg}")]
    FinalCheckpoint { step: u64, msg: String },
    /// The coordinator no longer runs this rank's attempt.
    #[error("this attempt was superseded: {0}")]
    Superseded(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("gradient all-reduce: {0}")]
    Collective(#[from] CollectiveError),
}
