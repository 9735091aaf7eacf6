use std::path::PathBuf;

/// Everything that can go wrong in the training engine. Each variant names the thing at fault
/// (a file, a spec field, a step) so the one-line message is enough to act on.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A data file (token shard, CSV, text) that is malformed, truncated or unusable.
    #[error("{}: {msg}", path.display())]
    Data { path: PathBuf, msg: String },
    /// An invalid job spec: the message names the field, the value and what is allowed.
    #[error("invalid job spec: {0}")]
    Spec(String),
    /// A model checkpoint file that cannot be used for this spec.
    #[error("{}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    /// A saved training state that does not fit this job.
    #[error("cannot resume: {0}")]
    Resume(String),
    /// A checkpoint whose parameters cannot seed this job (`Trainer::init_params_from`).
    #[error("cannot initialise parameters from the checkpoint: {0}")]
    InitFrom(String),
    /// A checkpoint that cannot be exported in the asked format, or a failed export.
    #[error("export to {}: {msg}", path.display())]
    Export { path: PathBuf, msg: String },
    #[error("step {step}: loss is {value} (non-finite); stopping")]
    NonFiniteLoss { step: u64, value: f32 },
    /// The gradient all-reduce failed (a lost peer, a timeout).
    #[error("collective: {0}")]
    Collective(String),
    /// The GPU could not do what the CUDA backend asked: no usable GPU, out of memory (with the
    /// estimated need), a kernel that did not compile or load, a failed launch.
    #[error("GPU: {0}")]
    Gpu(String),
    /// Another thread stopped the training loop (`train::StopToken`).
    #[error("stopped before step {}: {reason}", step + 1)]
    Stopped { step: u64, reason: String },
}

impl EngineError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn data(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        EngineError::Data {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// A GPU failure as the engine's error (for `map_err`).
pub(crate) fn gpu(e: convoy_kernels::cuda::CudaError) -> EngineError {
    EngineError::Gpu(e.to_string())
}

/// A spec that does not read or validate, as the engine's error (the same one line).
impl From<convoy_spec::SpecError> for EngineError {
    fn from(e: convoy_spec::SpecError) -> EngineError {
        match e {
            convoy_spec::SpecError::Io { path, source } => EngineError::Io { path, source },
            convoy_spec::SpecError::Invalid(msg) => EngineError::Spec(msg),
        }
    }
}
