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
    /// The job cannot run as written, wherever it is placed.
    #[error("{0}")]
    Job(String),
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

impl RankError {
    /// Whether the job itself is at fault (its spec, its data, its numbers), so that running
    /// it again, here or elsewhere, fails the same way: the rank exits with
    /// `EXIT_JOB_ERROR` and the coordinator fails the job without blaming the worker.
    /// Everything else (the network, the GPU, the machine, the coordinator) is the
    /// infrastructure's.
    pub fn is_job_error(&self) -> bool {
        match self {
            RankError::Job(_) | RankError::Spec(_) => true,
            RankError::Engine(e) => match e {
                EngineError::Data { .. }
                | EngineError::Spec(_)
                | EngineError::Checkpoint { .. }
                | EngineError::Resume(_)
                | EngineError::InitFrom(_)
                | EngineError::NonFiniteLoss { .. } => true,
                // A data file that is not there or not readable; a failing disk is not.
                EngineError::Io { source, .. } => matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::PermissionDenied
                        | std::io::ErrorKind::IsADirectory
                        | std::io::ErrorKind::InvalidData
                ),
                _ => false,
            },
            _ => false,
        }
    }

    /// Whether a peer failed rather than this rank: a collective that lost, timed out on
    /// or never met a neighbour. The rank exits with `EXIT_PEER_FAILED` and the coordinator
    /// does not blame its worker. Its own sockets failing is not a peer's fault.
    pub fn is_peer_failure(&self) -> bool {
        match self {
            RankError::Collective(e) => !matches!(e, CollectiveError::Local { .. }),
            RankError::Engine(EngineError::Collective(_)) => true,
            _ => false,
        }
    }
}
