//! Gradient all-reduce between the ranks of a CUDA job, through NCCL.
//!
//! Gradients never leave the GPU: each bucket is averaged in place on a stream of the reducer's
//! own as soon as the backward pass has written it, so communication overlaps the rest of the
//! backward pass. An event recorded on the compute stream orders the two streams.
//!
//! NCCL needs the calls on a communicator issued in the same order on every rank, and cudarc's
//! `Comm` is not `Send`: one OS thread owns the communicator and its stream for the reducer's
//! whole life, and the training thread sends it work over a channel, in order.
//!
//! A lost or hung peer must become an error on every rank (the attempt fails and the job resumes
//! from its checkpoint), never a rank waiting forever. So the communicator is created
//! non-blocking (no NCCL call holds the thread: setup and launches report `ncclInProgress` and
//! are polled), and while anything is outstanding the thread polls `ncclCommGetAsyncError`; on
//! an asynchronous error, or when nothing has progressed for the collective timeout, it calls
//! `ncclCommAbort` (which also ends NCCL kernels still waiting for a peer) and every later call
//! returns the same one-line error.
//!
//! The communicator is driven through cudarc's raw `nccl::result` and `nccl::sys` functions
//! rather than `Comm`, because `Comm` keeps its handle private (the watchdog must poll and abort
//! it) and only creates blocking communicators.

use std::any::Any;
use std::collections::VecDeque;
use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use convoy_engine::EngineError;
use convoy_engine::collective::DeviceGradReducer;
use convoy_kernels::cuda::Device;
use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use cudarc::nccl::Id;
use cudarc::nccl::result::{self as nccl, NcclStatus};
use cudarc::nccl::sys;

use crate::error::CollectiveError;

/// Bytes in an NCCL unique id, what rank 0 publishes through the rendezvous.
pub const NCCL_ID_BYTES: usize = 128;

/// How much longer than the collective timeout the training thread waits for an answer from the
/// NCCL thread before it calls the communicator hung. The watchdog itself never waits that long;
/// this only catches a call into NCCL that blocks although the communicator is non-blocking.
const STUCK_GRACE: Duration = Duration::from_secs(30);

/// Whether libnccl can be loaded in this process (cudarc panics on first use otherwise).
pub fn nccl_available() -> bool {
    // SAFETY: only tries to dlopen libnccl under cudarc's candidate names; no NCCL function is
    // called.
    unsafe { sys::is_culib_present() }
}

fn require_nccl() -> Result<(), CollectiveError> {
    match nccl_available() {
        true => Ok(()),
        false => Err(CollectiveError::NcclMissing),
    }
}

/// A fresh NCCL unique id for a job's ranks: rank 0 makes it and publishes it through the
/// rendezvous. It holds rank 0's bootstrap address, so it is valid only while this process
/// lives, which is why each attempt makes a new one.
pub fn nccl_unique_id() -> Result<Vec<u8>, CollectiveError> {
    require_nccl()?;
    let error = |msg: String| {
        CollectiveError::Nccl(format!(
            "rank 0: NCCL could not create the unique id: {msg}"
        ))
    };
    // A libnccl without one of the symbols cudarc binds panics instead of returning an error.
    let id = catch_unwind(Id::new)
        .map_err(|p| error(panic_message(p)))?
        .map_err(|e| error(error_string(e.0)))?;
    Ok(id_to_bytes(&id))
}

fn id_to_bytes(id: &Id) -> Vec<u8> {
    id.internal().iter().map(|&c| c as u8).collect()
}

fn id_from_bytes(bytes: &[u8]) -> Result<Id, CollectiveError> {
    let bytes: &[u8; NCCL_ID_BYTES] = bytes.try_into().map_err(|_| CollectiveError::NcclId {
        len: bytes.len(),
        expected: NCCL_ID_BYTES,
    })?;
    Ok(Id::uninit(bytes.map(|b| b as c_char)))
}

/// The ranges of a bucket sorted, with touching (or overlapping) ones joined and empty ones
/// dropped, so that a bucket of adjacent tensors costs one NCCL call. Every rank derives the
/// same list from the same bucket, so the calls still match across ranks.
fn merge_ranges(bucket: &[Range<usize>]) -> Vec<Range<usize>> {
    let mut sorted: Vec<Range<usize>> =
        bucket.iter().filter(|r| r.start < r.end).cloned().collect();
    sorted.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

fn panic_message(p: Box<dyn Any + Send>) -> String {
    match p.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => match p.downcast::<&'static str>() {
            Ok(s) => s.to_string(),
            Err(_) => "a panic without a message".into(),
        },
    }
}

/// "60 s", "2.5 s": timeouts as an operator wrote them.
fn seconds(d: Duration) -> String {
    match d.subsec_millis() {
        0 => format!("{} s", d.as_secs()),
        _ => format!("{:.1} s", d.as_secs_f64()),
    }
}

/// NCCL's name and description of a result code.
fn error_string(code: sys::ncclResult_t) -> String {
    // SAFETY: ncclGetErrorString maps any result code to a static NUL-terminated string (or
    // null, handled below), which is copied at once.
    let text = unsafe { sys::ncclGetErrorString(code) };
    if text.is_null() {
        return format!("{code:?}");
    }
    // SAFETY: non-null, NUL-terminated and static (see above).
    let text = unsafe { CStr::from_ptr(text) };
    format!("{code:?}: {}", text.to_string_lossy())
}

/// `ncclConfig_t` as NCCL 2.14 defined it, the first version with `blocking`. NCCL reads a config
/// by its `size` and `version` and gives every field added later its default, so this one works
/// with every NCCL from 2.14 on, whichever version cudarc's bindings were generated from.
#[repr(C)]
struct ConfigV21400 {
    size: usize,
    magic: c_uint,
    version: c_uint,
    blocking: c_int,
    /// Padding in 2.14's layout, where later versions have `cgaClusterSize` (reset to its
    /// default for a 2.14 config). Written so that no byte NCCL copies is uninitialised.
    reserved: c_int,
}

impl ConfigV21400 {
    fn non_blocking() -> ConfigV21400 {
        ConfigV21400 {
            size: size_of::<ConfigV21400>(),
            magic: 0xcafe_beef,
            // NCCL_VERSION(2, 14, 0)
            version: 21400,
            blocking: 0,
            // NCCL_CONFIG_UNDEF_INT
            reserved: c_int::MIN,
        }
    }
}

/// A contiguous run of elements in device memory.
#[derive(Clone, Copy, Debug)]
struct Span {
    ptr: u64,
    len: usize,
}

enum Work {
    /// Average `spans` over the ranks in place once the compute stream has reached `ready`, then
    /// record `done` on the NCCL stream.
    Bucket {
        spans: Vec<Span>,
        ready: CudaEvent,
        done: Arc<CudaEvent>,
    },
    /// Answer once every reduction queued so far has completed on the GPU.
    Drain { reply: Sender<Result<(), String>> },
    /// Sum `values` over the ranks.
    Scalars {
        values: Vec<f64>,
        reply: Sender<Result<Vec<f64>, String>>,
    },
}

/// What the training thread can see of the NCCL thread without asking it.
struct Shared {
    epoch: Instant,
    /// When the NCCL thread last showed it was not stuck inside a call, in ms after `epoch`.
    alive_ms: AtomicU64,
    /// Why the communicator is unusable, once it is: every later call returns this line.
    failure: Mutex<Option<String>>,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            epoch: Instant::now(),
            alive_ms: AtomicU64::new(0),
            failure: Mutex::new(None),
        }
    }

    fn beat(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.alive_ms.store(ms, Ordering::Relaxed);
    }

    fn alive_at(&self) -> Instant {
        self.epoch + Duration::from_millis(self.alive_ms.load(Ordering::Relaxed))
    }

    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Keeps the first failure: later ones are consequences of it.
    fn fail(&self, msg: &str) {
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(msg.to_string());
        }
    }
}

/// Averages a CUDA job's gradients over its ranks with NCCL; see the module doc for the design.
///
/// `finish` blocks the host until every bucket's reduction has completed on the GPU (with the
/// watchdog on), rather than only making the compute stream wait: the trainer's `sum_scalars`
/// right after it blocks on the same NCCL stream anyway, and this way no kernel queued after
/// `finish` can read a gradient that an aborted reduction left half-averaged, and no checkpoint
/// can be taken from one.
pub struct NcclReducer {
    rank: usize,
    world: usize,
    timeout: Duration,
    ctx: Arc<CudaContext>,
    work: Option<Sender<Work>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    /// The `done` events of this step's buckets, for `finish` to order the compute stream after.
    outstanding: Vec<Arc<CudaEvent>>,
    /// The NCCL thread stopped answering: dropping the reducer must not join it.
    stuck: bool,
}

impl NcclReducer {
    /// Joins the communicator of `world` ranks named by `id` (from [`nccl_unique_id`] on rank 0)
    /// as `rank`, on `device`. Returns once every rank has joined, or fails after `timeout`
    /// (the rank's collective timeout, which also bounds every later wait for a peer).
    pub fn new(
        device: &Device,
        rank: usize,
        world: usize,
        id: &[u8],
        timeout: Duration,
    ) -> Result<NcclReducer, CollectiveError> {
        if world == 0 || rank >= world {
            return Err(CollectiveError::Config(format!(
                "rank {rank} is not one of {world} ranks"
            )));
        }
        let nranks = c_int::try_from(world).map_err(|_| {
            CollectiveError::Config(format!("{world} ranks are more than NCCL takes"))
        })?;
        if timeout.is_zero() {
            return Err(CollectiveError::Config("timeout must be positive".into()));
        }
        let id = id_from_bytes(id)?;
        require_nccl()?;
        let shared = Arc::new(Shared::new());
        let (work_tx, work_rx) = mpsc::channel();
        let (setup_tx, setup_rx) = mpsc::channel();
        let setup = Setup {
            rank,
            // `rank < world`, which fits.
            rank_c: rank as c_int,
            world: nranks,
            id,
            timeout,
        };
        let thread = {
            let (ctx, shared) = (device.ctx.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("nccl-rank-{rank}"))
                .spawn(move || nccl_thread(ctx, setup, &shared, &setup_tx, work_rx))
                .map_err(|source| CollectiveError::Local {
                    during: "starting the NCCL thread",
                    source,
                })?
        };
        let reducer = |thread| NcclReducer {
            rank,
            world,
            timeout,
            ctx: device.ctx.clone(),
            work: Some(work_tx),
            thread: Some(thread),
            shared: shared.clone(),
            outstanding: Vec::new(),
            stuck: false,
        };
        match setup_rx.recv_timeout(timeout + STUCK_GRACE) {
            Ok(Ok(())) => Ok(reducer(thread)),
            Ok(Err(msg)) => {
                let _ = thread.join();
                Err(CollectiveError::Nccl(msg))
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = thread.join();
                Err(CollectiveError::Nccl(shared.failure().unwrap_or_else(
                    || format!("rank {rank}: the NCCL thread ended during setup"),
                )))
            }
            // Stuck inside NCCL: joining would hang too, so the thread is left behind (the rank
            // is about to exit with this error).
            Err(RecvTimeoutError::Timeout) => Err(CollectiveError::Nccl(format!(
                "rank {rank}: NCCL communicator setup did not return within {}",
                seconds(timeout + STUCK_GRACE)
            ))),
        }
    }

    fn gone(&self) -> EngineError {
        EngineError::Collective(
            self.shared
                .failure()
                .unwrap_or_else(|| format!("rank {}: the NCCL thread has stopped", self.rank)),
        )
    }

    fn send(&self, work: Work) -> Result<(), EngineError> {
        match &self.work {
            Some(tx) => tx.send(work).map_err(|_| self.gone()),
            None => Err(self.gone()),
        }
    }

    /// Waits for the NCCL thread's answer. Its watchdog answers within the timeout of the last
    /// progress; this only gives up when the thread itself has stopped showing signs of life.
    fn await_reply<T>(
        &mut self,
        rx: Receiver<Result<T, String>>,
        sent: Instant,
    ) -> Result<T, EngineError> {
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(answer) => return answer.map_err(EngineError::Collective),
                Err(RecvTimeoutError::Disconnected) => return Err(self.gone()),
                Err(RecvTimeoutError::Timeout) => {
                    let quiet = self.shared.alive_at().max(sent).elapsed();
                    if quiet > self.timeout + STUCK_GRACE {
                        self.stuck = true;
                        let msg = format!(
                            "rank {}: the NCCL thread has been inside one call into NCCL for {} \
                             (the communicator is hung)",
                            self.rank,
                            seconds(quiet)
                        );
                        self.shared.fail(&msg);
                        return Err(EngineError::Collective(msg));
                    }
                }
            }
        }
    }

    fn cuda_error(&self, what: &str, e: impl std::fmt::Display) -> EngineError {
        EngineError::Collective(format!(
            "rank {}: NCCL all-reduce: CUDA {what}: {e}",
            self.rank
        ))
    }
}

impl DeviceGradReducer for NcclReducer {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn bucket_ready(
        &mut self,
        grads: &CudaSlice<f32>,
        bucket: &[Range<usize>],
        compute: &CudaStream,
    ) -> Result<(), EngineError> {
        if let Some(f) = self.shared.failure() {
            return Err(EngineError::Collective(f));
        }
        let ranges = merge_ranges(bucket);
        // Sorted and disjoint: the last range ends furthest.
        let Some(end) = ranges.last().map(|r| r.end) else {
            return Ok(());
        };
        if end > grads.len() {
            return Err(EngineError::Collective(format!(
                "rank {}: a gradient bucket reaches element {end} of a buffer of {}",
                self.rank,
                grads.len()
            )));
        }
        // Taken before `ready` is recorded, so any wait cudarc adds for the buffer's last
        // write on the compute stream comes before the point the NCCL stream waits for.
        let base = {
            let (ptr, _record) = grads.device_ptr(compute);
            ptr
        };
        let ready = self
            .ctx
            .new_event(None)
            .map_err(|e| self.cuda_error("creating an event", e))?;
        ready
            .record(compute)
            .map_err(|e| self.cuda_error("recording an event on the compute stream", e))?;
        let done = Arc::new(
            self.ctx
                .new_event(None)
                .map_err(|e| self.cuda_error("creating an event", e))?,
        );
        let spans = ranges
            .iter()
            .map(|r| Span {
                ptr: base + (r.start * size_of::<f32>()) as u64,
                len: r.len(),
            })
            .collect();
        self.send(Work::Bucket {
            spans,
            ready,
            done: done.clone(),
        })?;
        self.outstanding.push(done);
        Ok(())
    }

    /// Blocks until every bucket's reduction has completed (see [`NcclReducer`] for why), then
    /// also orders `compute` after them.
    fn finish(
        &mut self,
        _grads: &mut CudaSlice<f32>,
        compute: &CudaStream,
    ) -> Result<(), EngineError> {
        let outstanding = std::mem::take(&mut self.outstanding);
        let (reply, rx) = mpsc::channel();
        let sent = Instant::now();
        self.send(Work::Drain { reply })?;
        self.await_reply(rx, sent)?;
        for done in &outstanding {
            compute
                .wait(done)
                .map_err(|e| self.cuda_error("ordering the compute stream after NCCL", e))?;
        }
        Ok(())
    }

    fn sum_scalars(&mut self, values: &mut [f64]) -> Result<(), EngineError> {
        if values.is_empty() {
            return Ok(());
        }
        let (reply, rx) = mpsc::channel();
        let sent = Instant::now();
        self.send(Work::Scalars {
            values: values.to_vec(),
            reply,
        })?;
        let summed = self.await_reply(rx, sent)?;
        for (v, s) in values.iter_mut().zip(summed) {
            *v = s;
        }
        Ok(())
    }
}

impl Drop for NcclReducer {
    fn drop(&mut self) {
        // Closing the channel tells the thread to tear the communicator down and end.
        drop(self.work.take());
        if let Some(thread) = self.thread.take()
            && !self.stuck
        {
            let _ = thread.join();
        }
    }
}

struct Setup {
    rank: usize,
    rank_c: c_int,
    world: c_int,
    id: Id,
    timeout: Duration,
}

fn nccl_thread(
    ctx: Arc<CudaContext>,
    setup: Setup,
    shared: &Shared,
    setup_tx: &Sender<Result<(), String>>,
    work: Receiver<Work>,
) {
    let rank = setup.rank;
    // A panic (cudarc panics on a symbol missing from an old libnccl) must reach the training
    // thread as an error; unwinding drops the communicator, which aborts it.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut thread = match NcclThread::start(ctx, &setup, shared) {
            Ok(w) => w,
            Err(msg) => {
                let _ = setup_tx.send(Err(msg));
                return;
            }
        };
        let _ = setup_tx.send(Ok(()));
        thread.serve(work);
    }));
    if let Err(p) = outcome {
        shared.fail(&format!(
            "rank {rank}: the NCCL thread panicked: {}",
            panic_message(p)
        ));
    }
}

/// The communicator handle. Dropping it without a clean teardown (an error, a panic) aborts
/// it, which never waits for peers.
struct RawComm(sys::ncclComm_t);

impl RawComm {
    fn abort(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the handle came from ncclCommInitRankConfig, has been neither destroyed
            // nor aborted (both null it), and only this thread uses it. Abort is allowed in any
            // state, setup and launches in progress included.
            let _ = unsafe { nccl::comm_abort(self.0) };
            self.0 = ptr::null_mut();
        }
    }
}

impl Drop for RawComm {
    fn drop(&mut self) {
        self.abort();
    }
}

/// A reduction launched on the NCCL stream and not yet seen complete.
struct InFlight {
    /// The compute stream's point the reduction waits for (`None` for scalars).
    ready: Option<CudaEvent>,
    done: Arc<CudaEvent>,
}

/// The NCCL thread's state. Field order is drop order: the communicator goes before the stream
/// its kernels run on.
struct NcclThread<'a> {
    comm: RawComm,
    pending: VecDeque<InFlight>,
    stream: Arc<CudaStream>,
    rank: usize,
    timeout: Duration,
    shared: &'a Shared,
    failed: Option<String>,
}

/// Sleeps between polls: briefly at first, so a step is not held up by a reduction that has
/// just completed, then longer, so a long wait costs no CPU.
struct Backoff(Instant);

impl Backoff {
    fn new() -> Backoff {
        Backoff(Instant::now())
    }

    fn pause(&self) {
        let waited = self.0.elapsed();
        std::thread::sleep(if waited < Duration::from_millis(20) {
            Duration::from_micros(20)
        } else if waited < Duration::from_millis(500) {
            Duration::from_micros(500)
        } else {
            Duration::from_millis(2)
        });
    }
}

impl<'a> NcclThread<'a> {
    fn start(
        ctx: Arc<CudaContext>,
        setup: &Setup,
        shared: &'a Shared,
    ) -> Result<NcclThread<'a>, String> {
        shared.beat();
        let rank = setup.rank;
        let cuda = |what: &str, e: cudarc::driver::DriverError| {
            format!("rank {rank}: NCCL communicator setup: CUDA {what}: {e}")
        };
        // NCCL takes its device from the thread's current context.
        ctx.bind_to_thread()
            .map_err(|e| cuda("making the GPU current on the NCCL thread", e))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| cuda("creating the NCCL stream", e))?;
        let mut config = ConfigV21400::non_blocking();
        let mut raw: sys::ncclComm_t = ptr::null_mut();
        let id = sys::ncclUniqueId {
            internal: *setup.id.internal(),
        };
        // SAFETY: `raw` and `config` are live locals; NCCL writes the handle and reads the
        // config (a valid 2.14-layout config, see `ConfigV21400`) before returning, and keeps
        // neither pointer. The id is passed by value; rank and world were checked.
        let started = unsafe {
            nccl::comm_init_rank_config(
                &mut raw,
                setup.world,
                id,
                setup.rank_c,
                (&mut config as *mut ConfigV21400).cast::<sys::ncclConfig_t>(),
            )
        };
        let mut thread = NcclThread {
            comm: RawComm(raw),
            pending: VecDeque::new(),
            stream,
            rank,
            timeout: setup.timeout,
            shared,
            failed: None,
        };
        if let Err(e) = started {
            let why = format!("NCCL communicator setup failed: {}", thread.describe(e.0));
            return Err(thread.fail(why));
        }
        let world = setup.world;
        let timeout = setup.timeout;
        let what = "NCCL communicator setup";
        thread.settle(what, Instant::now() + setup.timeout, || {
            format!(
                "NCCL communicator setup ({world} ranks) did not finish within {}: a rank never \
                 joined (it did not start, or cannot reach rank 0)",
                seconds(timeout)
            )
        })?;
        Ok(thread)
    }

    fn serve(&mut self, work: Receiver<Work>) {
        while let Ok(item) = work.recv() {
            self.shared.beat();
            match item {
                Work::Bucket { spans, ready, done } => self.reduce_bucket(&spans, ready, done),
                Work::Drain { reply } => {
                    let _ = reply.send(self.drain());
                }
                Work::Scalars { values, reply } => {
                    let _ = reply.send(self.sum_scalars(values));
                }
            }
        }
        self.shutdown();
    }

    /// Aborts the communicator (its kernels still waiting for a peer then end, so the compute
    /// stream's waits on them end too) and keeps the reason for every later call.
    fn fail(&mut self, why: String) -> String {
        if let Some(f) = &self.failed {
            return f.clone();
        }
        self.comm.abort();
        self.pending.clear();
        let msg = format!("rank {}: {why}; aborted the communicator", self.rank);
        self.shared.fail(&msg);
        self.failed = Some(msg.clone());
        msg
    }

    /// NCCL's description of `code`, with the communicator's last error when it says more.
    fn describe(&self, code: sys::ncclResult_t) -> String {
        let mut text = error_string(code);
        if !self.comm.0.is_null() {
            // SAFETY: a live handle; NCCL returns its own NUL-terminated message (or null),
            // copied at once below, before any other NCCL call can change it.
            let last = unsafe { sys::ncclGetLastError(self.comm.0) };
            if !last.is_null() {
                // SAFETY: non-null and NUL-terminated (see above).
                let last = unsafe { CStr::from_ptr(last) }.to_string_lossy();
                let last = last.trim();
                if !last.is_empty() {
                    text += &format!(" ({last})");
                }
            }
        }
        text
    }

    /// The communicator's state: `InProgress` while a setup or launch is under way, an error
    /// code once something failed asynchronously (a peer lost, a network error).
    fn async_state(&self) -> Result<NcclStatus, sys::ncclResult_t> {
        if self.comm.0.is_null() {
            return Err(sys::ncclResult_t::ncclInvalidUsage);
        }
        let mut state = sys::ncclResult_t::ncclSuccess;
        // SAFETY: a live handle (not null: `abort` and `shutdown` null it when they end it);
        // `state` is a local NCCL writes once.
        let r = unsafe { sys::ncclCommGetAsyncError(self.comm.0, &mut state) };
        r.result().map_err(|e| e.0)?;
        state.result().map_err(|e| e.0)
    }

    /// Polls until NCCL has finished the setup, launch or teardown in progress (`what`), failing
    /// on an error or at `deadline`.
    fn settle(
        &mut self,
        what: &str,
        deadline: Instant,
        on_timeout: impl FnOnce() -> String,
    ) -> Result<(), String> {
        let backoff = Backoff::new();
        loop {
            self.shared.beat();
            match self.async_state() {
                Ok(NcclStatus::InProgress) => {}
                Ok(_) => return Ok(()),
                Err(code) => {
                    let why = format!("{what} failed: {}", self.describe(code));
                    return Err(self.fail(why));
                }
            }
            if Instant::now() >= deadline {
                return Err(self.fail(on_timeout()));
            }
            backoff.pause();
        }
    }

    /// Issues `ops` (pointer, count, type, operation), in place, as one NCCL group on the NCCL
    /// stream, and waits until NCCL has launched them.
    ///
    /// # Safety
    /// Every pointer must address `count` elements of its type in a device allocation
    /// of this communicator's context that stays allocated, and that nothing else touches,
    /// until the reduction is seen complete or the communicator aborted.
    unsafe fn launch(
        &mut self,
        ops: &[(u64, usize, sys::ncclDataType_t, sys::ncclRedOp_t)],
    ) -> Result<(), String> {
        if let Some(f) = &self.failed {
            return Err(f.clone());
        }
        let stream = self.stream.cu_stream() as sys::cudaStream_t;
        if let Err(e) = nccl::group_start() {
            let why = format!(
                "NCCL all-reduce could not be launched: {}",
                self.describe(e.0)
            );
            return Err(self.fail(why));
        }
        let mut refused = None;
        for &(ptr, count, dtype, op) in ops {
            // SAFETY: the caller guarantees the buffer (see above); the same pointer as source
            // and destination is NCCL's in-place form; the communicator is live and `stream`
            // belongs to its context. Inside a group NCCL only records the call.
            let r = unsafe {
                nccl::all_reduce(
                    ptr as *const c_void,
                    ptr as *mut c_void,
                    count,
                    dtype,
                    op,
                    self.comm.0,
                    stream,
                )
            };
            if let Err(e) = r {
                refused = Some(e.0);
                break;
            }
        }
        // The group is closed even after a refused call: NCCL's group state is per thread.
        let ended = nccl::group_end();
        let code = match (refused, ended) {
            (Some(code), _) | (None, Err(nccl::NcclError(code))) => code,
            (None, Ok(NcclStatus::InProgress)) => {
                let timeout = self.timeout;
                return self.settle("NCCL all-reduce", Instant::now() + self.timeout, || {
                    format!(
                        "NCCL all-reduce launch did not finish within {} (a peer is lost or hung)",
                        seconds(timeout)
                    )
                });
            }
            (None, Ok(_)) => return Ok(()),
        };
        let why = format!(
            "NCCL all-reduce could not be launched: {}",
            self.describe(code)
        );
        Err(self.fail(why))
    }

    fn reduce_bucket(&mut self, spans: &[Span], ready: CudaEvent, done: Arc<CudaEvent>) {
        // After a failure the bucket is dropped; the next drain reports the failure.
        if self.failed.is_some() {
            return;
        }
        if let Err(e) = self.stream.wait(&ready) {
            self.fail(format!(
                "NCCL all-reduce: CUDA making the NCCL stream wait for a bucket: {e}"
            ));
            return;
        }
        let ops: Vec<_> = spans
            .iter()
            .map(|s| {
                (
                    s.ptr,
                    s.len,
                    sys::ncclDataType_t::ncclFloat32,
                    sys::ncclRedOp_t::ncclAvg,
                )
            })
            .collect();
        // SAFETY: the spans lie inside the trainer's gradient buffer (checked against its
        // length in `bucket_ready`), on this context. The trainer neither frees nor touches
        // those ranges until `finish` returns, and `finish` returns only after this reduction
        // is complete (`drain`) or the communicator is aborted, which ends its kernels. The
        // NCCL stream waits for `ready` first, so the backward pass has written them.
        if unsafe { self.launch(&ops) }.is_err() {
            return;
        }
        if let Err(e) = done.record(&self.stream) {
            self.fail(format!(
                "NCCL all-reduce: CUDA recording an event on the NCCL stream: {e}"
            ));
            return;
        }
        self.pending.push_back(InFlight {
            ready: Some(ready),
            done,
        });
    }

    /// Waits until every reduction launched so far has completed on the GPU, with the watchdog:
    /// an asynchronous NCCL error, or no progress for the timeout while this rank's own data is
    /// ready, aborts the communicator.
    fn drain(&mut self) -> Result<(), String> {
        if let Some(f) = &self.failed {
            return Err(f.clone());
        }
        let backoff = Backoff::new();
        let mut progress = Instant::now();
        loop {
            self.shared.beat();
            while let Some(front) = self.pending.front() {
                match front.done.try_is_complete() {
                    Ok(true) => {
                        self.pending.pop_front();
                        progress = Instant::now();
                    }
                    Ok(false) => break,
                    Err(e) => {
                        return Err(self.fail(format!("NCCL all-reduce: the GPU reported {e}")));
                    }
                }
            }
            let Some(front) = self.pending.front() else {
                return Ok(());
            };
            // This rank's own backward pass still producing the bucket is not a stall of NCCL.
            if front.ready.as_ref().is_some_and(|r| !r.is_complete()) {
                progress = Instant::now();
            }
            if let Err(code) = self.async_state() {
                let why = format!("NCCL all-reduce failed: {}", self.describe(code));
                return Err(self.fail(why));
            }
            if progress.elapsed() >= self.timeout {
                return Err(self.fail(format!(
                    "NCCL all-reduce made no progress for {} (a peer is lost or hung)",
                    seconds(self.timeout)
                )));
            }
            backoff.pause();
        }
    }

    fn sum_scalars(&mut self, mut values: Vec<f64>) -> Result<Vec<f64>, String> {
        // Reductions still outstanding complete first, under the watchdog: the copies below
        // may wait for the stream without one.
        self.drain()?;
        let cuda = |what: &str, e: cudarc::driver::DriverError| {
            format!("NCCL scalar sum: CUDA {what}: {e}")
        };
        let mut buf = match self.stream.clone_htod(&values) {
            Ok(b) => b,
            Err(e) => return Err(self.fail(cuda("copying the values to the GPU", e))),
        };
        let ptr = {
            let (ptr, _record) = buf.device_ptr_mut(&self.stream);
            ptr
        };
        let op = (
            ptr,
            values.len(),
            sys::ncclDataType_t::ncclFloat64,
            sys::ncclRedOp_t::ncclSum,
        );
        // SAFETY: `buf` holds `values.len()` f64s on this context; it is a local that lives
        // until after `drain` below has seen the reduction complete (or the communicator was
        // aborted), and nothing else uses it meanwhile.
        unsafe { self.launch(&[op]) }?;
        let done = match self.stream.record_event(None) {
            Ok(e) => Arc::new(e),
            Err(e) => return Err(self.fail(cuda("recording an event on the NCCL stream", e))),
        };
        self.pending.push_back(InFlight { ready: None, done });
        self.drain()?;
        let copied = self
            .stream
            .memcpy_dtoh(&buf, values.as_mut_slice())
            .and_then(|()| self.stream.synchronize());
        match copied {
            Ok(()) => Ok(values),
            Err(e) => Err(self.fail(cuda("copying the sums back", e))),
        }
    }

    /// The clean end after the last step: finalize (flushes this rank's own work) then destroy.
    /// With work still outstanding the trainer stopped mid-step (an error): abort at once then,
    /// rather than wait up to the timeout for peers that may be gone.
    fn shutdown(&mut self) {
        if self.failed.is_some() || self.comm.0.is_null() {
            return;
        }
        if self.pending.iter().any(|p| !p.done.is_complete()) {
            self.comm.abort();
            return;
        }
        // SAFETY: a live handle with no work outstanding; finalize is called once.
        let finalized = match unsafe { nccl::comm_finalize(self.comm.0) } {
            Ok(NcclStatus::InProgress) => self
                .settle(
                    "NCCL communicator teardown",
                    Instant::now() + self.timeout,
                    || "NCCL communicator teardown did not finish".into(),
                )
                .is_ok(),
            Ok(_) => true,
            Err(_) => false,
        };
        if finalized && !self.comm.0.is_null() {
            // SAFETY: finalized, live, destroyed once: the handle is cleared right after so
            // that dropping `RawComm` does not abort it as well.
            let _ = unsafe { nccl::comm_destroy(self.comm.0) };
            self.comm.0 = ptr::null_mut();
        } else {
            self.comm.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_survive_the_trip_through_bytes() {
        let bytes: Vec<u8> = (0..NCCL_ID_BYTES).map(|i| (i * 7 + 3) as u8).collect();
        let id = id_from_bytes(&bytes).expect("a 128-byte id");
        assert_eq!(id_to_bytes(&id), bytes);
    }

    #[test]
    fn an_id_of_the_wrong_length_is_an_error_naming_it() {
        for len in [0, 127, 129] {
            match id_from_bytes(&vec![1; len]) {
                Err(e @ CollectiveError::NcclId { .. }) => {
                    let text = e.to_string();
                    assert!(
                        text.contains(&format!("has {len} bytes, not 128")),
                        "{text}"
                    );
                }
                Err(e) => panic!("{len} bytes: wrong error {e}"),
                Ok(_) => panic!("{len} bytes accepted"),
            }
        }
    }

    #[test]
    fn adjacent_ranges_merge_into_one_call() {
        assert_eq!(merge_ranges(&[0..10, 10..20, 20..25]), vec![0..25]);
        // Scattered, out of order, with an empty one: sorted, touching ones joined.
        assert_eq!(
            merge_ranges(&[40..50, 5..5, 10..20, 0..10, 30..40, 60..61]),
            vec![0..20, 30..50, 60..61]
        );
        // Overlaps (not a valid bucket) still cover each element once.
        assert_eq!(merge_ranges(&[0..10, 5..8, 8..12]), vec![0..12]);
        assert!(merge_ranges(&[]).is_empty());
        assert!(merge_ranges(&[3..3, 7..7]).is_empty());
    }

    #[test]
    fn the_config_is_nccl_2_14s_layout() {
        assert_eq!(size_of::<ConfigV21400>(), 24);
        let c = ConfigV21400::non_blocking();
        assert_eq!(
            (c.size, c.magic, c.version, c.blocking),
            (24, 0xcafe_beef, 21400, 0)
        );
    }

    #[test]
    fn timeouts_read_as_written() {
        assert_eq!(seconds(Duration::from_secs(60)), "60 s");
        assert_eq!(seconds(Duration::from_millis(2500)), "2.5 s");
    }
}
