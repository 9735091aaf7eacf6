//! NCCL's C types and constants, exactly as `nccl.h` lays them out (2.14 to 2.30): what crosses
//! the C boundary. Enum parameters coming *in* (data types, reduction operations, result codes)
//! are taken as raw `u32`s and checked here, because a value outside a Rust enum would be
//! undefined behaviour; only result codes going *out* use [`NcclResult`], which never holds
//! anything but the values below.

use std::ffi::{c_char, c_int, c_uint, c_void};

use crate::error::NcclError;

/// `NCCL_VERSION(2, 21, 5)`: the version this stand-in reports (any version from 2.14 on has
/// the non-blocking communicators and `ncclCommFinalize` convoy relies on).
pub const VERSION_CODE: c_int = 2 * 10_000 + 21 * 100 + 5;

pub use crate::error::NcclResult;

/// `ncclGetErrorString`'s texts, NUL-terminated, as NCCL words them (without its hints about
/// `NCCL_DEBUG`, which this library does not read: `ncclGetLastError` says what happened).
pub(crate) fn error_string(raw: u32) -> &'static [u8] {
    match NcclResult::from_raw(raw) {
        Some(NcclResult::Success) => b"no error\0",
        Some(NcclResult::UnhandledCudaError) => b"unhandled cuda error (see ncclGetLastError)\0",
        Some(NcclResult::SystemError) => b"unhandled system error (see ncclGetLastError)\0",
        Some(NcclResult::InternalError) => {
            b"internal error - please report this issue to the NCCL developers\0"
        }
        Some(NcclResult::InvalidArgument) => b"invalid argument (see ncclGetLastError)\0",
        Some(NcclResult::InvalidUsage) => b"invalid usage (see ncclGetLastError)\0",
        Some(NcclResult::RemoteError) => b"remote process exited or there was a network error\0",
        Some(NcclResult::InProgress) => b"NCCL operation in progress\0",
        // ncclTimeout (NCCL 2.30), never returned here.
        None if raw == 8 => b"NCCL operation timed out\0",
        None => b"unknown result code\0",
    }
}

/// `ncclUniqueId`: 128 opaque bytes, passed by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UniqueId {
    pub internal: [c_char; 128],
}

/// `ncclComm_t`: an opaque pointer. Here it is a key into the registry of live communicators,
/// never dereferenced (see `registry`).
pub type CommHandle = *mut c_void;

/// `cudaStream_t` / `CUstream`.
pub type Stream = *mut c_void;

/// `ncclDataType_t` (the values of NCCL built with bfloat16, as every CUDA 11+ build is).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    Int8 = 0,
    Uint8 = 1,
    Int32 = 2,
    Uint32 = 3,
    Int64 = 4,
    Uint64 = 5,
    Float16 = 6,
    Float32 = 7,
    Float64 = 8,
    Bfloat16 = 9,
}

impl DataType {
    pub fn from_raw(raw: u32) -> Result<DataType, NcclError> {
        Ok(match raw {
            0 => DataType::Int8,
            1 => DataType::Uint8,
            2 => DataType::Int32,
            3 => DataType::Uint32,
            4 => DataType::Int64,
            5 => DataType::Uint64,
            6 => DataType::Float16,
            7 => DataType::Float32,
            8 => DataType::Float64,
            9 => DataType::Bfloat16,
            10 | 11 => {
                return Err(NcclError::InvalidArgument(format!(
                    "data type {raw} (an fp8 type) is not supported by the NCCL stand-in"
                )));
            }
            _ => {
                return Err(NcclError::InvalidArgument(format!(
                    "{raw} is not an NCCL data type"
                )));
            }
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DataType::Int8 | DataType::Uint8 => 1,
            DataType::Float16 | DataType::Bfloat16 => 2,
            DataType::Int32 | DataType::Uint32 | DataType::Float32 => 4,
            DataType::Int64 | DataType::Uint64 | DataType::Float64 => 8,
        }
    }
}

/// `ncclRedOp_t`'s built-in operations (user-defined ones, from `ncclRedOpCreatePreMulSum`,
/// are not supported).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RedOp {
    Sum = 0,
    Prod = 1,
    Max = 2,
    Min = 3,
    Avg = 4,
}

impl RedOp {
    pub fn from_raw(raw: u32) -> Result<RedOp, NcclError> {
        Ok(match raw {
            0 => RedOp::Sum,
            1 => RedOp::Prod,
            2 => RedOp::Max,
            3 => RedOp::Min,
            4 => RedOp::Avg,
            _ => {
                return Err(NcclError::InvalidArgument(format!(
                    "{raw} is not one of NCCL's built-in reduction operations (sum, prod, max, \
                     min, avg); custom operations are not supported by the NCCL stand-in"
                )));
            }
        })
    }
}

/// `NCCL_CONFIG_INITIALIZER`'s magic.
pub const CONFIG_MAGIC: c_uint = 0xcafe_beef;
/// `NCCL_CONFIG_UNDEF_INT`: a field left to its default.
pub const CONFIG_UNDEF_INT: c_int = c_int::MIN;

/// The fields every `ncclConfig_t` version starts with (2.14 on); later versions only append.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConfigHead {
    pub size: usize,
    pub magic: c_uint,
    pub version: c_uint,
    pub blocking: c_int,
}

/// Whether a communicator created with `config` (null: the defaults) is blocking, as NCCL
/// reads it: `blocking` left undefined means blocking.
///
/// # Safety
/// `config` is null or points to a readable config of at least the size its `size` field
/// claims (as `NCCL_CONFIG_INITIALIZER` fills it in).
pub unsafe fn config_blocking(config: *const c_void) -> Result<bool, NcclError> {
    if config.is_null() {
        return Ok(true);
    }
    // SAFETY: the caller guarantees a readable config; `size` is its first field, read without
    // assuming alignment.
    let size = unsafe { config.cast::<usize>().read_unaligned() };
    if size < size_of::<ConfigHead>() - 4 {
        return Err(NcclError::InvalidArgument(format!(
            "ncclConfig_t of {size} bytes is too small to hold `blocking`"
        )));
    }
    // SAFETY: `size` covers the fields of `ConfigHead` up to and including `blocking` (checked
    // above; the last 4 bytes of `ConfigHead` are its padding, not read from the config).
    let head = unsafe {
        let p = config.cast::<u8>();
        (
            p.add(8).cast::<c_uint>().read_unaligned(),
            p.add(16).cast::<c_int>().read_unaligned(),
        )
    };
    let (magic, blocking) = head;
    if magic != CONFIG_MAGIC {
        return Err(NcclError::InvalidArgument(format!(
            "ncclConfig_t magic is {magic:#x}, not {CONFIG_MAGIC:#x} (initialize it with \
             NCCL_CONFIG_INITIALIZER)"
        )));
    }
    Ok(blocking != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_ncclh() {
        assert_eq!(size_of::<UniqueId>(), 128);
        assert_eq!(size_of::<NcclResult>(), 4);
        assert_eq!(size_of::<ConfigHead>(), 24);
        assert_eq!(std::mem::offset_of!(ConfigHead, blocking), 16);
    }

    #[test]
    fn configs_are_read_as_nccl_reads_them() {
        let mut head = ConfigHead {
            size: 24,
            magic: CONFIG_MAGIC,
            version: 21400,
            blocking: 0,
        };
        let p = |h: &ConfigHead| (h as *const ConfigHead).cast::<c_void>();
        // SAFETY: a live, complete config.
        assert!(!unsafe { config_blocking(p(&head)) }.unwrap());
        head.blocking = CONFIG_UNDEF_INT;
        // SAFETY: as above.
        assert!(unsafe { config_blocking(p(&head)) }.unwrap());
        head.magic = 1;
        // SAFETY: as above.
        assert!(unsafe { config_blocking(p(&head)) }.is_err());
        // SAFETY: null is the defaults.
        assert!(unsafe { config_blocking(std::ptr::null()) }.unwrap());
    }

    #[test]
    fn every_code_has_a_string() {
        for raw in 0..10 {
            let s = error_string(raw);
            assert_eq!(s.last(), Some(&0));
            assert_eq!(s.iter().filter(|&&b| b == 0).count(), 1);
        }
    }
}
