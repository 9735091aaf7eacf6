//! A stand-in for libnccl, for ranks on one machine: built as `libconvoy_nccl_emu.so` and
//! linked as `libnccl.so` / `libnccl.so.2` into the folder the emulated GPU test pass puts on
//! `LD_LIBRARY_PATH`, so that convoy's `NcclReducer` (through cudarc's `nccl::result` and
//! `nccl::sys`) runs in CI without GPUs, over the CUDA stand-in of `emu/cuda` (or a real
//! driver). Test support only: never linked into convoy's binaries.
//!
//! # The C API
//!
//! NCCL's ABI exactly (`nccl.h` 2.14 to 2.30: enum values, `ncclUniqueId`'s 128 bytes,
//! `ncclConfig_t`'s leading fields), reporting version 2.21.5:
//! `ncclGetVersion`, `ncclGetUniqueId`, `ncclGetErrorString`, `ncclGetLastError`,
//! `ncclCommInitRank`, `ncclCommInitRankConfig` (reads `blocking` only), `ncclCommInitAll`,
//! `ncclCommFinalize`, `ncclCommDestroy`, `ncclCommAbort`, `ncclCommGetAsyncError`,
//! `ncclCommCount`, `ncclCommCuDevice`, `ncclCommUserRank`, `ncclAllReduce`, `ncclReduce`,
//! `ncclBroadcast`, `ncclBcast`, `ncclAllGather`, `ncclReduceScatter`, `ncclSend`, `ncclRecv`,
//! `ncclGroupStart`, `ncclGroupEnd`. Data types: int8, uint8, int32, uint32, int64, uint64,
//! float16, float32, float64, bfloat16 (not the fp8 types); operations: sum, prod, max, min,
//! avg (not `ncclRedOpCreatePreMulSum`'s). A symbol not listed is absent, so cudarc panics
//! naming it rather than calling something half-made.
//!
//! # Transport
//!
//! `ncclGetUniqueId` draws a random token and a random Unix socket path in the caller's
//! temporary directory; both travel in the id (see `id`), and nothing is started yet. Rank 0
//! listens there when it joins, the other ranks connect (retrying until rank 0 listens) and say
//! hello with the token, and once all are in, rank 0 removes the socket file and tells everyone.
//! Ranks may be processes or threads of one process, in any mix, on one machine. Rank 0 is the
//! hub: each collective's inputs go to it, it reduces them in rank order, element by element
//! (f32 in f32, f64 in f64, f16/bf16 in f32 rounded once; see [`reduce`]), and sends each rank
//! its part, so results are deterministic and a sum over two ranks is bit-identical to NCCL's.
//! Point-to-point data (`ncclSend`/`ncclRecv`) is relayed through rank 0, whose connections
//! outlive its own `ncclCommDestroy` until the other ranks close theirs (a destroy never waits
//! for other ranks: one thread may destroy every rank's communicator in turn).
//!
//! # Buffers and streams
//!
//! Buffers are device addresses, reached only through the CUDA driver API of the libcuda the
//! process has loaded (`cuMemcpyDtoH_v2` / `cuMemcpyHtoD_v2`, with `cuCtxSetCurrent` to the
//! context current at the call and `cuStreamSynchronize` on the call's stream before the
//! buffers are touched), looked up at run time: this library links no CUDA library (see
//! `memory`). An operation's data movement has *completed* when the operation is seen complete:
//! nothing is left running on the stream. With the emulated driver, whose kernels run when
//! launched, that is exactly stream order; on a real GPU it is the host-synchronous order NCCL
//! itself does not promise but convoy's use already waits for.
//!
//! # Blocking and non-blocking communicators
//!
//! Each communicator has a worker thread that runs its operations (setup, each call or group,
//! finalize) in issue order. A blocking communicator's calls return once their work is done
//! (so the buffers are in place before the caller synchronizes its stream). A non-blocking one
//! (`ncclCommInitRankConfig` with `blocking = 0`, as convoy's `NcclReducer` makes it) returns
//! `ncclInProgress` from setup, from calls outside a group and from `ncclGroupEnd` while the work
//! runs; `ncclCommGetAsyncError` then reports `ncclInProgress` until every submitted operation
//! has finished, `ncclSuccess` after, or the communicator's error. The reducer polls it until
//! success before it records its completion event, so the data is in place by then. Unlike
//! NCCL, a call issued while an earlier one is still in progress is queued behind it rather
//! than refused.
//!
//! # Failures
//!
//! A reader thread per connection notices at once when a peer's socket closes without the
//! goodbye that `ncclCommFinalize` (or `ncclCommDestroy`) sends: the peer died, was killed, or
//! aborted. Rank 0 then tells every other rank, and every operation waiting for data that can
//! no longer come fails with `ncclRemoteError`, which `ncclCommGetAsyncError` and every later
//! call report (a loss while nothing is pending shows at the next operation, as in NCCL). A
//! rank that fails on its own (a CUDA copy refused, ranks calling different collectives) tells
//! the others the same way, before its own caller sees the error. A rank that said goodbye is
//! no error until a collective needs it; then rank 0 fails it and tells the others which rank
//! left. No wait has a timeout of its own: a peer that hangs without dying is the caller's
//! watchdog's business, and `ncclCommAbort` ends any pending operation promptly (waits are
//! woken, sockets shut down, setup's listen and connect loops stop within 20 ms) from any
//! thread. Each failure prints one line on stderr, `convoy-nccl-emu: rank R of N: <what>
//! (<code>)` (a bad argument: `convoy-nccl-emu: <function>: <what> (<code>)`), and
//! `ncclGetLastError` returns the text.
//!
//! # Fault injection (test support)
//!
//! A process started with `CONVOY_NCCL_EMU_KILL_AT=N` SIGKILLs itself inside its N-th
//! collective on a communicator (counted from 1 on each communicator; point-to-point calls do
//! not count): rank 0 once every other rank's part of it has arrived, so they are all blocked
//! in it waiting for their results; another rank before it sends its part, so rank 0 fails
//! that collective whether it is already waiting or gets there later. With
//! `CONVOY_NCCL_EMU_KILL_WHEN=FILE` as well, the rank first waits there until FILE exists (an
//! abort or destroy of the communicator meanwhile ends the wait, and the kill), so that a test
//! decides when: e.g. once it has seen a checkpoint the job stored. It says so on stderr,
//! `convoy-nccl-emu: rank R of N: CONVOY_NCCL_EMU_KILL_AT=N: SIGKILL in <collective>`, and a
//! line before the wait. The others see what a process killed on a real machine leaves: a
//! connection closed without a goodbye, `ncclRemoteError`. A value that is not a collective
//! number fails every collective of the process with `ncclInvalidUsage` naming it.
//!
//! # Tests
//!
//! The functions are plain `extern "C"` Rust functions too, so tests call them directly;
//! [`use_host_memory`] makes them take host pointers, to test the transport and the C API
//! without any libcuda.

pub mod abi;
#[allow(clippy::too_many_arguments)] // NCCL's own signatures.
pub mod api;
mod comm;
pub mod error;
mod fault;
mod id;
mod memory;
pub mod reduce;
mod wire;

pub use abi::{CommHandle, DataType, NcclResult, RedOp, Stream, UniqueId, VERSION_CODE};
pub use api::*;
pub use error::NcclError;
pub use memory::use_host_memory;
