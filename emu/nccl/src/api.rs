//! The exported NCCL C API (the symbols of `libnccl.so`), with NCCL's signatures.
//!
//! Each function checks its arguments, turns a call into a job for the communicator's worker
//! (see `comm`), and either waits for it (a blocking communicator) or reports `ncclInProgress`
//! while it runs (a non-blocking one, polled with `ncclCommGetAsyncError`). Between
//! `ncclGroupStart` and `ncclGroupEnd` the calls of a thread are collected and handed to the
//! workers at the end, all communicators' first and only then waited for, so one thread can
//! drive several communicators of the same group (as `ncclCommInitAll`'s users do).
//!
//! Communicator handles are keys into a registry, never pointers: a destroyed or aborted handle,
//! or garbage, is `ncclInvalidArgument`, not a crash, and a watchdog thread may abort a
//! communicator while another thread is inside a call on it.

#![allow(non_snake_case)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{CString, c_char, c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::abi::{
    CommHandle, DataType, NcclResult, RedOp, Stream, UniqueId, VERSION_CODE, config_blocking,
    error_string,
};
use crate::comm::{Comm, Job, Op, OpKind, lock};
use crate::error::NcclError;
use crate::id::RendezvousId;
use crate::memory::memory;
use crate::wire::{Call, CollKind};

/// An error of a call: `New` ones are this call's own (printed on stderr once, here),
/// `Reported` ones are a communicator's failure, already printed when it happened.
enum ApiError {
    New(NcclError),
    Reported(NcclError),
}

impl From<NcclError> for ApiError {
    fn from(e: NcclError) -> ApiError {
        ApiError::New(e)
    }
}

fn reported(e: NcclError) -> ApiError {
    ApiError::Reported(e)
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::New(NcclError::InvalidArgument(msg.into()))
}

type ApiResult = Result<NcclResult, ApiError>;

thread_local! {
    /// What ncclGetLastError returns on this thread.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    static GROUP: RefCell<Group> = RefCell::new(Group::default());
}

fn set_last_error(text: &str) {
    let text = CString::new(text.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = text);
}

/// Runs one API call: its result code, the thread's last error, and one stderr line for an
/// error of the call's own.
fn api(name: &str, f: impl FnOnce() -> ApiResult) -> NcclResult {
    match f() {
        Ok(r) => r,
        Err(ApiError::New(e)) => {
            eprintln!("convoy-nccl-emu: {name}: {e} ({})", e.code().name());
            set_last_error(&e.to_string());
            e.code()
        }
        Err(ApiError::Reported(e)) => {
            set_last_error(&e.to_string());
            e.code()
        }
    }
}

// ---- the registry of live communicators ----

static COMMS: Mutex<BTreeMap<usize, Arc<Comm>>> = Mutex::new(BTreeMap::new());
static NEXT_KEY: AtomicUsize = AtomicUsize::new(1);

fn register(comm: Arc<Comm>) -> CommHandle {
    // Aligned-looking, non-null, never reused.
    let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed) << 4;
    lock(&COMMS).insert(key, comm);
    std::ptr::without_provenance_mut(key)
}

fn live(handle: CommHandle) -> Result<Arc<Comm>, ApiError> {
    lock(&COMMS)
        .get(&handle.addr())
        .cloned()
        .ok_or_else(|| invalid(format!("{handle:p} is not a live communicator")))
}

fn unregister(handle: CommHandle) -> Result<Arc<Comm>, ApiError> {
    lock(&COMMS)
        .remove(&handle.addr())
        .ok_or_else(|| invalid(format!("{handle:p} is not a live communicator")))
}

// ---- groups ----

#[derive(Default)]
struct Group {
    depth: usize,
    ops: Vec<(Arc<Comm>, Op)>,
    /// Jobs submitted inside the group (communicator setup) that ncclGroupEnd waits for.
    waits: Vec<(Arc<Comm>, u64)>,
    /// The first call of the group that failed: the group is dropped and ncclGroupEnd
    /// returns it.
    error: Option<NcclError>,
}

fn in_group() -> bool {
    GROUP.with(|g| g.borrow().depth > 0)
}

/// Waits as each communicator's mode says: a blocking one until its job is done, a
/// non-blocking one not at all (`ncclInProgress` while any is pending).
fn settle(waits: &[(Arc<Comm>, u64)]) -> ApiResult {
    for (c, t) in waits.iter().filter(|(c, _)| c.blocking) {
        c.wait(*t).map_err(reported)?;
    }
    let mut pending = false;
    for (c, t) in waits.iter().filter(|(c, _)| !c.blocking) {
        if c.pending(*t) {
            pending = true;
        } else if let Some(e) = c.failure() {
            return Err(reported(e));
        }
    }
    Ok(if pending {
        NcclResult::InProgress
    } else {
        NcclResult::Success
    })
}

/// Submits `job` now, or, inside a group, records the wait for ncclGroupEnd.
fn submit_and_settle(comm: Arc<Comm>, job: Job) -> ApiResult {
    let ticket = comm.submit(job).map_err(reported)?;
    if in_group() {
        GROUP.with(|g| g.borrow_mut().waits.push((comm, ticket)));
        return Ok(NcclResult::Success);
    }
    settle(&[(comm, ticket)])
}

/// Runs `op` now, or queues it until ncclGroupEnd.
fn enqueue(comm: Arc<Comm>, op: Op) -> ApiResult {
    if let Some(e) = comm.failure() {
        return Err(reported(e));
    }
    if in_group() {
        GROUP.with(|g| g.borrow_mut().ops.push((comm, op)));
        return Ok(NcclResult::Success);
    }
    submit_and_settle(comm, Job::Ops(vec![op]))
}

/// Records a failed call inside a group (ncclGroupEnd reports it too).
fn group_error<T>(r: Result<T, ApiError>) -> Result<T, ApiError> {
    if let Err(ApiError::New(e) | ApiError::Reported(e)) = &r {
        GROUP.with(|g| {
            let mut g = g.borrow_mut();
            if g.depth > 0 && g.error.is_none() {
                g.error = Some(e.clone());
            }
        });
    }
    r
}

/// `ncclGroupStart`: collect this thread's calls until the matching `ncclGroupEnd`.
#[unsafe(no_mangle)]
pub extern "C" fn ncclGroupStart() -> NcclResult {
    GROUP.with(|g| g.borrow_mut().depth += 1);
    NcclResult::Success
}

/// `ncclGroupEnd`: hand the group's calls to their communicators' workers (one job per
/// communicator, calls in order), then wait as each communicator's mode says.
#[unsafe(no_mangle)]
pub extern "C" fn ncclGroupEnd() -> NcclResult {
    api("ncclGroupEnd", || {
        let taken = GROUP.with(|g| {
            let mut g = g.borrow_mut();
            match g.depth {
                0 => Err(ApiError::New(NcclError::InvalidUsage(
                    "ncclGroupEnd without ncclGroupStart".into(),
                ))),
                1 => {
                    g.depth = 0;
                    Ok(Some((
                        std::mem::take(&mut g.ops),
                        std::mem::take(&mut g.waits),
                        g.error.take(),
                    )))
                }
                _ => {
                    g.depth -= 1;
                    Ok(None)
                }
            }
        })?;
        let Some((ops, mut waits, error)) = taken else {
            return Ok(NcclResult::Success);
        };
        if let Some(e) = error {
            return Err(reported(e));
        }
        let mut batches: Vec<(Arc<Comm>, Vec<Op>)> = Vec::new();
        for (comm, op) in ops {
            match batches.iter_mut().find(|(c, _)| Arc::ptr_eq(c, &comm)) {
                Some((_, batch)) => batch.push(op),
                None => batches.push((comm, vec![op])),
            }
        }
        let mut refused = None;
        for (comm, batch) in batches {
            match comm.submit(Job::Ops(batch)) {
                Ok(t) => waits.push((comm, t)),
                Err(e) => {
                    refused.get_or_insert(e);
                }
            }
        }
        let settled = settle(&waits);
        match refused {
            Some(e) => Err(reported(e)),
            None => settled,
        }
    })
}

// ---- version, ids, errors ----

/// `ncclGetVersion`.
///
/// # Safety
/// `version` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclGetVersion(version: *mut c_int) -> NcclResult {
    api("ncclGetVersion", || {
        if version.is_null() {
            return Err(invalid("version is null"));
        }
        // SAFETY: non-null, and writable by the caller's contract.
        unsafe { version.write(VERSION_CODE) };
        Ok(NcclResult::Success)
    })
}

/// `ncclGetUniqueId`: a fresh rendezvous (see `id`). Unlike NCCL's it starts nothing in this
/// process: rank 0 listens when it joins, and ranks that come first retry until it does.
///
/// # Safety
/// `out` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclGetUniqueId(out: *mut UniqueId) -> NcclResult {
    api("ncclGetUniqueId", || {
        if out.is_null() {
            return Err(invalid("uniqueId is null"));
        }
        let id = RendezvousId::new()?.encode()?;
        // SAFETY: non-null, and writable by the caller's contract.
        unsafe { out.write(id) };
        Ok(NcclResult::Success)
    })
}

/// `ncclGetErrorString`: a static description of a result code.
#[unsafe(no_mangle)]
pub extern "C" fn ncclGetErrorString(result: u32) -> *const c_char {
    error_string(result).as_ptr().cast()
}

/// `ncclGetLastError`: the communicator's error if it has failed, else the last error of a call
/// on this thread ("" if none). The text stays valid until the next NCCL call of this thread.
#[unsafe(no_mangle)]
pub extern "C" fn ncclGetLastError(comm: CommHandle) -> *const c_char {
    let failure = lock(&COMMS).get(&comm.addr()).and_then(|c| c.failure());
    if let Some(e) = failure {
        set_last_error(&e.to_string());
    }
    LAST_ERROR.with(|l| l.borrow().as_ptr())
}

// ---- communicators ----

/// Checks the arguments of an init call, creates the communicator and starts its setup.
///
/// # Safety
/// `out` is null or writable.
unsafe fn init_rank(
    out: *mut CommHandle,
    nranks: c_int,
    id: &UniqueId,
    rank: c_int,
    blocking: bool,
) -> ApiResult {
    if out.is_null() {
        return Err(invalid("comm is null"));
    }
    if nranks < 1 {
        return Err(invalid(format!("nranks is {nranks}")));
    }
    if rank < 0 || rank >= nranks {
        return Err(invalid(format!("rank {rank} is not one of {nranks} ranks")));
    }
    let id = RendezvousId::decode(id)?;
    let (ctx, device) = memory().current()?;
    // Both are non-negative (checked above).
    let comm = Comm::new(rank as usize, nranks as usize, blocking, ctx, device, None)?;
    let handle = register(comm.clone());
    // SAFETY: non-null (checked above), writable by the caller's contract.
    unsafe { out.write(handle) };
    let grouped = in_group();
    let r = submit_and_settle(comm.clone(), Job::Init(id));
    if r.is_err() && blocking && !grouped {
        // A blocking setup that failed leaves no communicator behind, as NCCL's.
        if let Ok(c) = unregister(handle) {
            c.abort();
        }
        // SAFETY: as above.
        unsafe { out.write(std::ptr::null_mut()) };
    }
    r
}

/// `ncclCommInitRank`: a blocking communicator.
///
/// # Safety
/// `comm` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommInitRank(
    comm: *mut CommHandle,
    nranks: c_int,
    comm_id: UniqueId,
    rank: c_int,
) -> NcclResult {
    // SAFETY: the caller's contract is init_rank's.
    api("ncclCommInitRank", || unsafe {
        init_rank(comm, nranks, &comm_id, rank, true)
    })
}

/// `ncclCommInitRankConfig`: reads `blocking` from the config (null: blocking); a non-blocking
/// communicator returns `ncclInProgress` at once and joins the others on its worker.
///
/// # Safety
/// `comm` is null or writable; `config` is null or an `ncclConfig_t` set up with
/// `NCCL_CONFIG_INITIALIZER`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommInitRankConfig(
    comm: *mut CommHandle,
    nranks: c_int,
    comm_id: UniqueId,
    rank: c_int,
    config: *mut c_void,
) -> NcclResult {
    api("ncclCommInitRankConfig", || {
        // SAFETY: the caller guarantees the config.
        let blocking = unsafe { config_blocking(config) }?;
        // SAFETY: the caller's contract is init_rank's.
        unsafe { init_rank(comm, nranks, &comm_id, rank, blocking) }
    })
}

/// `ncclCommInitAll`: `ndev` blocking communicators of one process, rank i on device
/// `devlist[i]` (null: device i), through the devices' primary contexts.
///
/// # Safety
/// `comms` is null or has room for `ndev` handles; `devlist` is null or holds `ndev` ints.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommInitAll(
    comms: *mut CommHandle,
    ndev: c_int,
    devlist: *const c_int,
) -> NcclResult {
    api("ncclCommInitAll", || {
        if comms.is_null() {
            return Err(invalid("comm is null"));
        }
        if ndev < 1 {
            return Err(invalid(format!("ndev is {ndev}")));
        }
        let id = RendezvousId::new()?;
        let mut made: Vec<Arc<Comm>> = Vec::new();
        let mut waits = Vec::new();
        let mut start = || -> Result<(), NcclError> {
            for i in 0..ndev {
                let ordinal = match devlist.is_null() {
                    true => i,
                    // SAFETY: `devlist` holds `ndev` ints (the caller's contract), i < ndev.
                    false => unsafe { devlist.add(i as usize).read() },
                };
                let ctx = memory().retain_primary(ordinal)?;
                let comm = Comm::new(i as usize, ndev as usize, true, ctx, ordinal, Some(ordinal))?;
                made.push(comm.clone());
                waits.push((comm.clone(), comm.submit(Job::Init(id.clone()))?));
            }
            for (c, t) in &waits {
                c.wait(*t)?;
            }
            Ok(())
        };
        if let Err(e) = start() {
            for c in &made {
                c.abort();
            }
            return Err(e.into());
        }
        for (i, c) in made.into_iter().enumerate() {
            // SAFETY: `comms` has room for `ndev` handles (the caller's contract), i < ndev.
            unsafe { comms.add(i).write(register(c)) };
        }
        Ok(NcclResult::Success)
    })
}

/// `ncclCommFinalize`: queues this rank's goodbye after its pending operations; blocking
/// communicators wait for it, non-blocking ones report `ncclInProgress` until it is done.
///
/// # Safety
/// None beyond passing a handle (any value is checked).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommFinalize(comm: CommHandle) -> NcclResult {
    api("ncclCommFinalize", || {
        let c = live(comm)?;
        match c.finalize() {
            None => Ok(NcclResult::Success),
            Some(Ok(t)) => settle(&[(c, t)]),
            Some(Err(e)) => Err(reported(e)),
        }
    })
}

/// `ncclCommDestroy`: finalizes if that was not done (waiting for pending operations), then
/// frees the communicator. The handle is invalid afterwards.
///
/// # Safety
/// None beyond passing a handle (any value is checked).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommDestroy(comm: CommHandle) -> NcclResult {
    api("ncclCommDestroy", || {
        unregister(comm)?.destroy();
        Ok(NcclResult::Success)
    })
}

/// `ncclCommAbort`: ends pending operations at once (the other ranks see this one gone) and
/// frees the communicator. Safe to call from another thread while one is inside a call on it.
///
/// # Safety
/// None beyond passing a handle (any value is checked).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommAbort(comm: CommHandle) -> NcclResult {
    api("ncclCommAbort", || {
        unregister(comm)?.abort();
        Ok(NcclResult::Success)
    })
}

/// `ncclCommGetAsyncError`: the communicator's error, else `ncclInProgress` while setup or
/// an operation is pending, else `ncclSuccess`.
///
/// # Safety
/// `async_error` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommGetAsyncError(
    comm: CommHandle,
    async_error: *mut NcclResult,
) -> NcclResult {
    api("ncclCommGetAsyncError", || {
        if async_error.is_null() {
            return Err(invalid("asyncError is null"));
        }
        let state = live(comm)?.async_state();
        // SAFETY: non-null, and writable by the caller's contract.
        unsafe { async_error.write(state) };
        Ok(NcclResult::Success)
    })
}

/// Writes one int property of a live communicator.
///
/// # Safety
/// `out` is null or writable.
unsafe fn comm_int(
    name: &str,
    comm: CommHandle,
    out: *mut c_int,
    f: fn(&Comm) -> c_int,
) -> NcclResult {
    api(name, || {
        if out.is_null() {
            return Err(invalid("the output pointer is null"));
        }
        let v = f(live(comm)?.as_ref());
        // SAFETY: non-null, and writable by the caller's contract.
        unsafe { out.write(v) };
        Ok(NcclResult::Success)
    })
}

/// `ncclCommCount`: the number of ranks.
///
/// # Safety
/// `count` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommCount(comm: CommHandle, count: *mut c_int) -> NcclResult {
    // SAFETY: the same contract. nranks came from a c_int.
    unsafe { comm_int("ncclCommCount", comm, count, |c| c.nranks as c_int) }
}

/// `ncclCommCuDevice`: the device of the context current at creation.
///
/// # Safety
/// `device` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommCuDevice(comm: CommHandle, device: *mut c_int) -> NcclResult {
    // SAFETY: the same contract.
    unsafe { comm_int("ncclCommCuDevice", comm, device, |c| c.device) }
}

/// `ncclCommUserRank`: this communicator's rank.
///
/// # Safety
/// `rank` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommUserRank(comm: CommHandle, rank: *mut c_int) -> NcclResult {
    // SAFETY: the same contract. rank came from a c_int.
    unsafe { comm_int("ncclCommUserRank", comm, rank, |c| c.rank as c_int) }
}

// ---- collectives and point-to-point ----

/// Bytes of `elems` elements of `size`, or an error naming the call.
fn byte_len(elems: u64, size: usize) -> Result<usize, ApiError> {
    usize::try_from(elems)
        .ok()
        .and_then(|e| e.checked_mul(size))
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| invalid(format!("{elems} elements of {size} bytes overflow")))
}

/// Checks a collective's arguments and queues it.
fn collective(
    comm: CommHandle,
    kind: CollKind,
    count: usize,
    dtype: u32,
    op: u32,
    root: c_int,
    send: *const c_void,
    recv: *mut c_void,
    stream: Stream,
) -> ApiResult {
    let c = live(comm)?;
    let dtype = DataType::from_raw(dtype)?;
    let op = match kind {
        CollKind::AllReduce | CollKind::Reduce | CollKind::ReduceScatter => RedOp::from_raw(op)?,
        CollKind::Broadcast | CollKind::AllGather => RedOp::Sum,
    };
    let root = match kind {
        CollKind::Broadcast | CollKind::Reduce => {
            if root < 0 || root as usize >= c.nranks {
                return Err(invalid(format!(
                    "root {root} is not one of {} ranks",
                    c.nranks
                )));
            }
            root as u32
        }
        _ => 0,
    };
    let call = Call {
        kind,
        dtype,
        op,
        root,
        count: count as u64,
    };
    let size = dtype.size();
    // The largest buffer any rank uses (n · count for gathers and scatters) must be addressable.
    byte_len((count as u64).saturating_mul(c.nranks as u64), size)?;
    let send_bytes = byte_len(call.send_elems(c.rank, c.nranks), size)?;
    let recv_bytes = byte_len(call.recv_elems(c.rank, c.nranks), size)?;
    if send_bytes > 0 && send.is_null() {
        return Err(invalid("sendbuff is null"));
    }
    if recv_bytes > 0 && recv.is_null() {
        return Err(invalid("recvbuff is null"));
    }
    let (ctx, _) = memory().current()?;
    enqueue(
        c,
        Op {
            what: OpKind::Collective {
                call,
                send: send as u64,
                recv: recv as u64,
            },
            ctx,
            stream: stream as usize,
        },
    )
}

/// `ncclAllReduce`: every rank receives the reduction of every rank's `count` elements.
///
/// # Safety
/// `sendbuff` and `recvbuff` (the same pointer for in place) address `count` elements of
/// device memory of the calling thread's current context, valid until the operation is seen
/// complete (a blocking call returned, or `ncclCommGetAsyncError` reports success).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclAllReduce(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: u32,
    op: u32,
    comm: CommHandle,
    stream: Stream,
) -> NcclResult {
    api("ncclAllReduce", || {
        group_error(collective(
            comm,
            CollKind::AllReduce,
            count,
            datatype,
            op,
            0,
            sendbuff,
            recvbuff,
            stream,
        ))
    })
}

/// `ncclBroadcast`: every rank receives `root`'s `count` elements.
///
/// # Safety
/// As [`ncclAllReduce`]; `sendbuff` is read on `root` only.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclBroadcast(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: u32,
    root: c_int,
    comm: CommHandle,
    stream: Stream,
) -> NcclResult {
    api("ncclBroadcast", || {
        group_error(collective(
            comm,
            CollKind::Broadcast,
            count,
            datatype,
            0,
            root,
            sendbuff,
            recvbuff,
            stream,
        ))
    })
}

/// `ncclBcast`: the in-place broadcast.
///
/// # Safety
/// As [`ncclBroadcast`] with `buff` for both buffers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclBcast(
    buff: *mut c_void,
    count: usize,
    datatype: u32,
    root: c_int,
    comm: CommHandle,
    stream: Stream,
) -> NcclResult {
    api("ncclBcast", || {
        group_error(collective(
            comm,
            CollKind::Broadcast,
            count,
            datatype,
            0,
            root,
            buff,
            buff,
            stream,
        ))
    })
}

/// `ncclReduce`: `root` receives the reduction; the other ranks' `recvbuff` is not touched.
///
/// # Safety
/// As [`ncclAllReduce`]; `recvbuff` is written on `root` only.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclReduce(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: u32,
    op: u32,
    root: c_int,
    comm: CommHandle,
    stream: Stream,
) -> NcclResult {
    api("ncclReduce", || {
        group_error(collective(
            comm,
            CollKind::Reduce,
            count,
            datatype,
            op,
            root,
            sendbuff,
            recvbuff,
            stream,
        ))
    })
}

/// `ncclAllGather`: every rank receives all ranks' `sendcount` elements, in rank order.
///
/// # Safety
/// As [`ncclAllReduce`], with `recvbuff` holding `nranks · sendcount` elements.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclAllGather(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    sendcount: usize,
    datatype: u32,
    comm: CommHandle,
    stream: Stream,
) -> NcclResult {
    api("ncclAllGather", || {
        group_error(collective(
            comm,
            CollKind::AllGather,
            sendcount,
            datatype,
            0,
            0,
            sendbuff,
            recvbuff,
            stream,
        ))
    })
}

/// `ncclReduceScatter`: rank r receives block r (`recvcount` elements) of the reduction of
/// every rank's `nranks · recvcount` elements.
///
/// # Safety
/// As [`ncclAllReduce`], with `sendbuff` holding `nranks · recvcount` elements.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclReduceScatter(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    recvcount: usize,
    datatype: u32,
    op: u32,
    comm: CommHandle,
    stream: Stream,
) -> NcclResult {
    api("ncclReduceScatter", || {
        group_error(collective(
            comm,
            CollKind::ReduceScatter,
            recvcount,
            datatype,
            op,
            0,
            sendbuff,
            recvbuff,
            stream,
        ))
    })
}

/// Checks a point-to-point call's arguments and queues it.
fn p2p(
    comm: CommHandle,
    send: bool,
    buf: *const c_void,
    count: usize,
    dtype: u32,
    peer: c_int,
    stream: Stream,
) -> ApiResult {
    let c = live(comm)?;
    let dtype = DataType::from_raw(dtype)?;
    if peer < 0 || peer as usize >= c.nranks {
        return Err(invalid(format!(
            "peer {peer} is not one of {} ranks",
            c.nranks
        )));
    }
    let peer = peer as usize;
    let bytes = byte_len(count as u64, dtype.size())?;
    if bytes > 0 && buf.is_null() {
        return Err(invalid("the buffer is null"));
    }
    let buf = buf as u64;
    let (ctx, _) = memory().current()?;
    let what = match send {
        true => OpKind::Send { peer, buf, bytes },
        false => OpKind::Recv { peer, buf, bytes },
    };
    enqueue(
        c,
        Op {
            what,
            ctx,
            stream: stream as usize,
        },
    )
}

/// `ncclSend`: `count` elements to `peer`, which must post a matching `ncclRecv`. Relayed by
/// rank 0, which must still be alive.
///
/// # Safety
/// `sendbuff` addresses `count` elements of device memory, valid until the operation completes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclSend(
    sendbuff: *const c_void,
    count: usize,
    datatype: u32,
    peer: c_int,
    comm: CommHandle,
    stream: Stream,
) -> NcclResult {
    api("ncclSend", || {
        group_error(p2p(comm, true, sendbuff, count, datatype, peer, stream))
    })
}

/// `ncclRecv`: `count` elements from `peer`'s matching `ncclSend`.
///
/// # Safety
/// `recvbuff` addresses `count` elements of device memory, valid until the operation
/// completes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclRecv(
    recvbuff: *mut c_void,
    count: usize,
    datatype: u32,
    peer: c_int,
    comm: CommHandle,
    stream: Stream,
) -> NcclResult {
    api("ncclRecv", || {
        group_error(p2p(comm, false, recvbuff, count, datatype, peer, stream))
    })
}
