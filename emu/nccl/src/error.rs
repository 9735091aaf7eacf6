//! Why an NCCL call or an operation of a communicator failed: one line naming the problem, and
//! the NCCL result code it becomes at the C boundary.

use thiserror::Error;

/// A failure, kept (cloned) as a communicator's sticky error once an operation hits it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NcclError {
    /// A bad argument to a call: a null pointer, a rank out of range, an unknown data type.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A call that is valid alone but not here: ranks calling different collectives, a
    /// communicator used after it was aborted, ncclGroupEnd without ncclGroupStart.
    #[error("invalid usage: {0}")]
    InvalidUsage(String),
    /// A peer is gone (its process died, it aborted or destroyed its communicator) or reported
    /// a failure of its own.
    #[error("{0}")]
    Remote(String),
    /// A failure of this process's sockets or files.
    #[error("{0}")]
    System(String),
    /// The CUDA driver refused a copy, a synchronization or a context switch.
    #[error("CUDA: {0}")]
    Cuda(String),
    /// A message that breaks the stand-in's own protocol.
    #[error("internal error: {0}")]
    Internal(String),
}

impl NcclError {
    /// The result code NCCL returns for this kind of failure.
    pub fn code(&self) -> NcclResult {
        match self {
            NcclError::InvalidArgument(_) => NcclResult::InvalidArgument,
            NcclError::InvalidUsage(_) => NcclResult::InvalidUsage,
            NcclError::Remote(_) => NcclResult::RemoteError,
            NcclError::System(_) => NcclResult::SystemError,
            NcclError::Cuda(_) => NcclResult::UnhandledCudaError,
            NcclError::Internal(_) => NcclResult::InternalError,
        }
    }

    /// The text without the kind's prefix (what travels to other ranks with the code).
    pub(crate) fn message(&self) -> &str {
        match self {
            NcclError::InvalidArgument(m)
            | NcclError::InvalidUsage(m)
            | NcclError::Remote(m)
            | NcclError::System(m)
            | NcclError::Cuda(m)
            | NcclError::Internal(m) => m,
        }
    }

    /// The failure a peer reported with `code` and `message` (what `Msg::Error` carries).
    pub(crate) fn from_code(code: u32, message: String) -> NcclError {
        match NcclResult::from_raw(code) {
            Some(NcclResult::InvalidArgument) => NcclError::InvalidArgument(message),
            Some(NcclResult::InvalidUsage) => NcclError::InvalidUsage(message),
            Some(NcclResult::SystemError) => NcclError::System(message),
            Some(NcclResult::UnhandledCudaError) => NcclError::Cuda(message),
            Some(NcclResult::InternalError) => NcclError::Internal(message),
            _ => NcclError::Remote(message),
        }
    }

    /// The same failure as another rank sees it: the code travels, the text says who.
    pub(crate) fn reported_by(&self, rank: usize) -> NcclError {
        NcclError::from_code(
            self.code() as u32,
            format!("rank {rank}: {}", self.message()),
        )
    }
}

/// `ncclResult_t` (an `int`-sized C enum). Only these values are ever returned.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NcclResult {
    Success = 0,
    UnhandledCudaError = 1,
    SystemError = 2,
    InternalError = 3,
    InvalidArgument = 4,
    InvalidUsage = 5,
    RemoteError = 6,
    InProgress = 7,
}

impl NcclResult {
    /// NCCL's own name of the code (`ncclRemoteError`, ...).
    pub fn name(self) -> &'static str {
        match self {
            NcclResult::Success => "ncclSuccess",
            NcclResult::UnhandledCudaError => "ncclUnhandledCudaError",
            NcclResult::SystemError => "ncclSystemError",
            NcclResult::InternalError => "ncclInternalError",
            NcclResult::InvalidArgument => "ncclInvalidArgument",
            NcclResult::InvalidUsage => "ncclInvalidUsage",
            NcclResult::RemoteError => "ncclRemoteError",
            NcclResult::InProgress => "ncclInProgress",
        }
    }

    pub(crate) fn from_raw(raw: u32) -> Option<NcclResult> {
        Some(match raw {
            0 => NcclResult::Success,
            1 => NcclResult::UnhandledCudaError,
            2 => NcclResult::SystemError,
            3 => NcclResult::InternalError,
            4 => NcclResult::InvalidArgument,
            5 => NcclResult::InvalidUsage,
            6 => NcclResult::RemoteError,
            7 => NcclResult::InProgress,
            _ => return None,
        })
    }
}
