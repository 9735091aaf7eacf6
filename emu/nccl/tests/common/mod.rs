//! Helpers for driving the stand-in's C API from Rust over host buffers: ranks as threads,
//! typed buffers as bytes, and bounded polls of non-blocking communicators.

#![allow(dead_code)]

use std::ffi::{CStr, c_void};
use std::ptr;
use std::time::{Duration, Instant};

use convoy_nccl_emu::abi::{CONFIG_MAGIC, ConfigHead};
use convoy_nccl_emu::reduce::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
use convoy_nccl_emu::*;

/// Only a guard against a hang turning into a stuck test: every wait below ends long before
/// this unless something is broken.
pub const GUARD: Duration = Duration::from_secs(60);

pub fn host_memory() {
    // SAFETY: every buffer these tests pass is a live host buffer for the whole operation.
    unsafe { use_host_memory() }.expect("host memory");
}

pub fn unique_id() -> UniqueId {
    let mut id = UniqueId { internal: [0; 128] };
    // SAFETY: a live local.
    assert_eq!(unsafe { ncclGetUniqueId(&mut id) }, NcclResult::Success);
    id
}

/// A communicator handle that may cross threads (the registry behind it is thread-safe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handle(pub usize);

impl Handle {
    pub fn raw(self) -> CommHandle {
        ptr::without_provenance_mut(self.0)
    }
}

pub fn init_blocking(nranks: usize, id: UniqueId, rank: usize) -> Handle {
    let mut comm: CommHandle = ptr::null_mut();
    // SAFETY: a live local for the handle.
    let r = unsafe { ncclCommInitRank(&mut comm, nranks as i32, id, rank as i32) };
    assert_eq!(r, NcclResult::Success, "rank {rank}: init");
    Handle(comm.addr())
}

/// Starts a non-blocking communicator (as convoy's reducer does): returns before it is set up.
pub fn init_nonblocking(nranks: usize, id: UniqueId, rank: usize) -> Handle {
    let mut config = ConfigHead {
        size: 24,
        magic: CONFIG_MAGIC,
        version: 21400,
        blocking: 0,
    };
    let mut comm: CommHandle = ptr::null_mut();
    // SAFETY: live locals; the config is a complete 2.14-layout config.
    let r = unsafe {
        ncclCommInitRankConfig(
            &mut comm,
            nranks as i32,
            id,
            rank as i32,
            (&mut config as *mut ConfigHead).cast(),
        )
    };
    assert!(
        matches!(r, NcclResult::InProgress | NcclResult::Success),
        "rank {rank}: init returned {r:?}"
    );
    assert!(!comm.is_null());
    Handle(comm.addr())
}

pub fn async_state(comm: Handle) -> NcclResult {
    let mut state = NcclResult::InternalError;
    // SAFETY: a live local.
    let r = unsafe { ncclCommGetAsyncError(comm.raw(), &mut state) };
    assert_eq!(r, NcclResult::Success, "ncclCommGetAsyncError");
    state
}

/// Polls until the communicator is no longer in progress (the watchdog's loop), failing the
/// test only past the guard.
pub fn settle(comm: Handle) -> NcclResult {
    let start = Instant::now();
    loop {
        match async_state(comm) {
            NcclResult::InProgress => {}
            other => return other,
        }
        assert!(start.elapsed() < GUARD, "still in progress after {GUARD:?}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

pub fn last_error(comm: Handle) -> String {
    let p = ncclGetLastError(comm.raw());
    assert!(!p.is_null());
    // SAFETY: a NUL-terminated string valid until this thread's next NCCL call.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

pub fn destroy(comm: Handle) {
    // SAFETY: a handle (checked by the library).
    assert_eq!(unsafe { ncclCommDestroy(comm.raw()) }, NcclResult::Success);
}

pub fn abort(comm: Handle) {
    // SAFETY: a handle (checked by the library).
    assert_eq!(unsafe { ncclCommAbort(comm.raw()) }, NcclResult::Success);
}

/// Runs `f(rank)` on `n` threads at once and returns their results in rank order.
pub fn ranks<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = (0..n).map(|r| s.spawn(move || f(r))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    })
}

pub const ALL_TYPES: [DataType; 10] = [
    DataType::Int8,
    DataType::Uint8,
    DataType::Int32,
    DataType::Uint32,
    DataType::Int64,
    DataType::Uint64,
    DataType::Float16,
    DataType::Float32,
    DataType::Float64,
    DataType::Bfloat16,
];

pub const ALL_OPS: [RedOp; 5] = [RedOp::Sum, RedOp::Prod, RedOp::Max, RedOp::Min, RedOp::Avg];

pub fn signed(t: DataType) -> bool {
    !matches!(t, DataType::Uint8 | DataType::Uint32 | DataType::Uint64)
}

/// Integer-valued `values` in `t`'s bytes (integers wrap, floats round to nearest).
pub fn encode(t: DataType, values: &[f64]) -> Vec<u8> {
    let mut out = Vec::new();
    for &v in values {
        let i = v as i128;
        match t {
            DataType::Int8 => out.extend((i as i8).to_le_bytes()),
            DataType::Uint8 => out.extend((i as u8).to_le_bytes()),
            DataType::Int32 => out.extend((i as i32).to_le_bytes()),
            DataType::Uint32 => out.extend((i as u32).to_le_bytes()),
            DataType::Int64 => out.extend((i as i64).to_le_bytes()),
            DataType::Uint64 => out.extend((i as u64).to_le_bytes()),
            DataType::Float16 => out.extend(f32_to_f16(v as f32).to_le_bytes()),
            DataType::Float32 => out.extend((v as f32).to_le_bytes()),
            DataType::Float64 => out.extend(v.to_le_bytes()),
            DataType::Bfloat16 => out.extend(f32_to_bf16(v as f32).to_le_bytes()),
        }
    }
    out
}

fn elem<const N: usize>(b: &[u8]) -> [u8; N] {
    b.try_into().expect("a whole element")
}

pub fn decode(t: DataType, bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(t.size())
        .map(|b| match t {
            DataType::Int8 => b[0] as i8 as f64,
            DataType::Uint8 => b[0] as f64,
            DataType::Int32 => i32::from_le_bytes(elem(b)) as f64,
            DataType::Uint32 => u32::from_le_bytes(elem(b)) as f64,
            DataType::Int64 => i64::from_le_bytes(elem(b)) as f64,
            DataType::Uint64 => u64::from_le_bytes(elem(b)) as f64,
            DataType::Float16 => f16_to_f32(u16::from_le_bytes([b[0], b[1]])) as f64,
            DataType::Float32 => f32::from_le_bytes(elem(b)) as f64,
            DataType::Float64 => f64::from_le_bytes(elem(b)),
            DataType::Bfloat16 => bf16_to_f32(u16::from_le_bytes([b[0], b[1]])) as f64,
        })
        .collect()
}

/// The value `x` (an exact integer) takes once stored in `t`.
pub fn stored(t: DataType, x: f64) -> f64 {
    decode(t, &encode(t, &[x]))[0]
}

pub fn void(b: &mut [u8]) -> *mut c_void {
    b.as_mut_ptr().cast()
}

pub fn cvoid(b: &[u8]) -> *const c_void {
    b.as_ptr().cast()
}

pub fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn to_f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|x| f32::from_le_bytes(elem(x)))
        .collect()
}

/// One all-reduce on a blocking communicator, in place or not.
pub fn all_reduce(
    comm: Handle,
    send: &[u8],
    recv: &mut [u8],
    t: DataType,
    op: RedOp,
) -> NcclResult {
    let count = send.len() / t.size();
    // SAFETY: both buffers are live for the blocking call.
    unsafe {
        ncclAllReduce(
            cvoid(send),
            void(recv),
            count,
            t as u32,
            op as u32,
            comm.raw(),
            ptr::null_mut(),
        )
    }
}
