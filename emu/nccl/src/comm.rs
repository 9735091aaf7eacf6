//! A communicator: one rank's connection to the others, and the worker thread that runs its
//! operations in the order they were issued.
//!
//! Rank 0 is the hub: every other rank has one Unix socket, to rank 0, and every collective is
//! computed there (inputs gathered, reduced in rank order, each rank sent what it receives), so
//! the results are deterministic. A reader thread per socket moves arriving messages into the
//! communicator's state at once, whatever the worker is doing, which is how a peer that goes
//! away is noticed at any moment: its socket reaches end-of-file without the goodbye that
//! `ncclCommFinalize` sends.
//!
//! Each wait of the worker names the ranks whose messages it waits for (rank 0 waits for each
//! rank's contribution, the others for rank 0's result), and fails once nothing is left to take
//! and one of those ranks is *gone* (said goodbye, or its connection ended), or the
//! communicator is *broken* (a failure reported by some rank). A connection that ends without
//! a goodbye is a failure: rank 0 tells every other rank at once (after any result it is in
//! the middle of sending), so that every pending collective fails. A goodbye is not: the rank
//! has done all its collectives, and the next collective that needs it fails at rank 0, which
//! tells the others why. An operation that fails makes the communicator's sticky error, which
//! `ncclCommGetAsyncError` and every later call report, and is reported to the other ranks
//! before the caller can see it.

use std::collections::VecDeque;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use std::ffi::c_int;

use crate::abi::NcclResult;
use crate::error::NcclError;
use crate::fault;
use crate::id::RendezvousId;
use crate::memory::{Context, Memory, memory};
use crate::reduce::reduce;
use crate::wire::{Call, CollKind, HELLO_LIMIT, MAX_PAYLOAD, Msg, read_msg, write_msg};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a communicator's worker runs, in submission order.
pub(crate) enum Job {
    /// Join the other ranks at the rendezvous.
    Init(RendezvousId),
    /// One call, or the calls of one group: point-to-point sends first (they never wait), then
    /// the rest in order.
    Ops(Vec<Op>),
    /// Tell the others this rank sends nothing more.
    Finalize,
}

/// A call with its buffers (device addresses), stream and the context current at the call.
pub(crate) struct Op {
    pub what: OpKind,
    pub ctx: Context,
    pub stream: usize,
}

pub(crate) enum OpKind {
    Collective { call: Call, send: u64, recv: u64 },
    Send { peer: usize, buf: u64, bytes: usize },
    Recv { peer: usize, buf: u64, bytes: usize },
}

/// One connection, shared by its reader thread (reads), the worker and other readers (writes,
/// one frame at a time) and teardown (shutdown).
struct Peer {
    sock: UnixStream,
    write: Mutex<()>,
}

impl Peer {
    fn new(sock: UnixStream) -> Arc<Peer> {
        Arc::new(Peer {
            sock,
            write: Mutex::new(()),
        })
    }

    fn send(&self, msg: &Msg) -> io::Result<()> {
        let _one_frame_at_a_time = lock(&self.write);
        write_msg(&self.sock, msg)
    }

    fn shut(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

#[derive(Default)]
struct State {
    /// Tickets: jobs submitted, and the last one the worker has finished (in order).
    submitted: u64,
    completed: u64,
    /// The first failed job and why: every later call reports it.
    failed: Option<(u64, NcclError)>,
    /// Set once the first failure is being spread (only the first is).
    breaking: bool,
    /// Why no more data can come (a peer gone or failed): waits fail once nothing they wait
    /// for is left.
    broken: Option<NcclError>,
    /// Teardown has begun (destroy or abort); `aborted` only for abort.
    closing: bool,
    aborted: bool,
    /// Rank 0: which ranks have said hello.
    joined: Vec<bool>,
    joined_count: usize,
    /// Other ranks: rank 0 said everyone is here.
    ready: bool,
    /// Rank 0: each rank's collective inputs, in arrival order.
    contribs: Vec<VecDeque<(u64, Call, Vec<u8>)>>,
    /// Other ranks: rank 0's answers, in order.
    results: VecDeque<(u64, Vec<u8>)>,
    /// Point-to-point data by source rank.
    p2p: Vec<VecDeque<Vec<u8>>>,
    /// Ranks known to have said goodbye: rank 0 knows of every rank, the others of rank 0 and
    /// of the ranks rank 0 said left.
    left: Vec<Option<NcclError>>,
    /// Ranks whose connection ended without a goodbye (rank 0: any; the others: rank 0, also
    /// after its goodbye, when relays through it end).
    lost: Vec<Option<NcclError>>,
    /// The socket file rank 0 listens on, while it exists.
    bound: Option<PathBuf>,
}

struct Shared {
    rank: usize,
    nranks: usize,
    state: Mutex<State>,
    changed: Condvar,
    /// By rank (other ranks: only rank 0's entry).
    peers: Mutex<Vec<Option<Arc<Peer>>>>,
    /// Every connection made or accepted, so teardown can shut them all down.
    conns: Mutex<Vec<Arc<Peer>>>,
    readers: Mutex<Vec<JoinHandle<()>>>,
    /// Rank 0: held while the worker sends a collective's results, and while news of a failure
    /// is sent, so that the news never overtakes a result already due to a rank (which would
    /// fail a collective that completed everywhere else).
    relay: Mutex<()>,
}

/// Polls of the listener and of a connect to a rank 0 that is not listening yet: short at first,
/// never more than 20 ms apart (how long an abort may wait for one to notice).
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(Duration::from_micros(200))
    }

    fn pause(&mut self) {
        std::thread::sleep(self.0);
        self.0 = (self.0 * 2).min(Duration::from_millis(20));
    }
}

pub(crate) struct Comm {
    pub rank: usize,
    pub nranks: usize,
    pub blocking: bool,
    pub device: c_int,
    /// The device whose primary context this communicator retained (`ncclCommInitAll`).
    primary: Option<c_int>,
    shared: Arc<Shared>,
    jobs: Mutex<Option<Sender<(u64, Job)>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    finalized: AtomicBool,
    torn_down: AtomicBool,
}

impl Comm {
    /// A communicator for `rank` of `nranks` and its worker thread; nothing is connected until
    /// the `Init` job runs. `ctx` is the context for calls made with none current.
    pub fn new(
        rank: usize,
        nranks: usize,
        blocking: bool,
        ctx: Context,
        device: c_int,
        primary: Option<c_int>,
    ) -> Result<Arc<Comm>, NcclError> {
        let state = State {
            joined: vec![false; nranks],
            contribs: vec![VecDeque::new(); nranks],
            p2p: vec![VecDeque::new(); nranks],
            left: vec![None; nranks],
            lost: vec![None; nranks],
            ..State::default()
        };
        let shared = Arc::new(Shared {
            rank,
            nranks,
            state: Mutex::new(state),
            changed: Condvar::new(),
            peers: Mutex::new(vec![None; nranks]),
            conns: Mutex::new(Vec::new()),
            readers: Mutex::new(Vec::new()),
            relay: Mutex::new(()),
        });
        let (tx, rx) = mpsc::channel();
        let worker = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("nccl-emu-r{rank}"))
                .spawn(move || shared.work(ctx, rx))
                .map_err(|e| NcclError::System(format!("starting the worker thread: {e}")))?
        };
        Ok(Arc::new(Comm {
            rank,
            nranks,
            blocking,
            device,
            primary,
            shared,
            jobs: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
            finalized: AtomicBool::new(false),
            torn_down: AtomicBool::new(false),
        }))
    }

    /// Queues `job`; returns its ticket for [`Comm::wait`]. A communicator that has failed
    /// refuses new work with its error.
    pub fn submit(&self, job: Job) -> Result<u64, NcclError> {
        // The job lock is held while the ticket is taken and the job sent, so tickets reach the
        // worker in order.
        let jobs = lock(&self.jobs);
        let ticket = {
            let mut st = self.shared.lock();
            if let Some((_, e)) = &st.failed {
                return Err(e.clone());
            }
            if st.closing {
                return Err(NcclError::InvalidUsage(
                    "the communicator is being destroyed".into(),
                ));
            }
            st.submitted += 1;
            st.submitted
        };
        let sent = jobs.as_ref().map(|tx| tx.send((ticket, job)));
        match sent {
            Some(Ok(())) => Ok(ticket),
            _ => {
                let e = NcclError::Internal("the communicator's worker thread has stopped".into());
                self.shared.finish(ticket, Err(e.clone()));
                Err(e)
            }
        }
    }

    /// Blocks until job `ticket` has finished: its outcome (the communicator's error if it, or
    /// an earlier job, failed).
    pub fn wait(&self, ticket: u64) -> Result<(), NcclError> {
        let mut st = self.shared.lock();
        loop {
            if let Some((t, e)) = &st.failed
                && *t <= ticket
            {
                return Err(e.clone());
            }
            if st.completed >= ticket {
                return Ok(());
            }
            if st.aborted {
                return Err(aborted());
            }
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Whether job `ticket` is still queued or running.
    pub fn pending(&self, ticket: u64) -> bool {
        let st = self.shared.lock();
        st.completed < ticket && st.failed.is_none()
    }

    /// What `ncclCommGetAsyncError` reports: the sticky error, else whether work is pending.
    pub fn async_state(&self) -> NcclResult {
        let st = self.shared.lock();
        match &st.failed {
            Some((_, e)) => e.code(),
            None if st.completed < st.submitted => NcclResult::InProgress,
            None => NcclResult::Success,
        }
    }

    /// The sticky error, if any.
    pub fn failure(&self) -> Option<NcclError> {
        self.shared.lock().failed.as_ref().map(|(_, e)| e.clone())
    }

    /// Queues the goodbye once (`ncclCommFinalize`); `None` when it was queued before.
    pub fn finalize(&self) -> Option<Result<u64, NcclError>> {
        if self.finalized.swap(true, Ordering::SeqCst) {
            return None;
        }
        Some(self.submit(Job::Finalize))
    }

    /// `ncclCommDestroy`: finalizes if that was not done (waiting for every queued job first,
    /// as NCCL does), then closes the connections and ends the threads. A failed communicator
    /// is only torn down.
    pub fn destroy(&self) {
        let ticket = match self.finalize() {
            Some(Ok(t)) => Some(t),
            Some(Err(_)) => None,
            None => Some(self.shared.lock().submitted),
        };
        if let Some(t) = ticket {
            let _ = self.wait(t);
        }
        self.teardown(false);
    }

    /// `ncclCommAbort`: ends whatever is pending at once (waits fail, sockets are shut down,
    /// the listener and connect loops stop), then ends the threads. Peers see this rank's
    /// connection close without a goodbye.
    pub fn abort(&self) {
        self.teardown(true);
    }

    /// Ends the worker and the connections. After a clean goodbye rank 0's connections and
    /// readers stay, detached, until each other rank closes its end: they may still relay
    /// point-to-point data between ranks that have not finished (`ncclCommDestroy` of rank 0
    /// must not wait for the others, which one thread may destroy after it).
    fn teardown(&self, abort: bool) {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let linger = {
            let mut st = self.shared.lock();
            st.closing = true;
            st.aborted |= abort;
            self.shared.changed.notify_all();
            !abort && self.rank == 0 && self.nranks > 1 && st.failed.is_none()
        };
        if !linger {
            self.shared.shut_all();
        }
        drop(lock(&self.jobs).take());
        if let Some(w) = lock(&self.worker).take() {
            let _ = w.join();
        }
        let readers = std::mem::take(&mut *lock(&self.shared.readers));
        if linger {
            // Each ends when its rank closes its connection (or its process ends).
            drop(readers);
        } else {
            // Connections the worker made while it was being stopped, too.
            self.shared.shut_all();
            for r in readers {
                let _ = r.join();
            }
        }
        if let Some(path) = self.shared.lock().bound.take() {
            let _ = std::fs::remove_file(path);
        }
        if let Some(ordinal) = self.primary {
            memory().release_primary(ordinal);
        }
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        self.teardown(true);
    }
}

fn aborted() -> NcclError {
    NcclError::InvalidUsage("the communicator was aborted".into())
}

fn destroyed() -> NcclError {
    NcclError::InvalidUsage("the communicator was destroyed".into())
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn is_hub(&self) -> bool {
        self.rank == 0
    }

    fn shut_all(&self) {
        for c in lock(&self.conns).iter() {
            c.shut();
        }
    }

    /// Registers a new connection; `Err` (and the connection shut) when teardown has begun,
    /// which then cannot miss it.
    fn add_conn(&self, peer: &Arc<Peer>) -> Result<(), NcclError> {
        lock(&self.conns).push(peer.clone());
        let st = self.lock();
        if st.closing {
            peer.shut();
            return Err(if st.aborted { aborted() } else { destroyed() });
        }
        Ok(())
    }

    fn peer(&self, rank: usize) -> Option<Arc<Peer>> {
        lock(&self.peers).get(rank).cloned().flatten()
    }

    /// Waits until `take` finds what the worker needs in the state. Fails when the
    /// communicator is aborted or destroyed, or, with nothing left to take, when it is broken,
    /// one of the ranks `sender` (which must still send it something) has left, or the
    /// connection to one of the ranks `via` (which it comes through) is lost.
    fn wait_for<T>(
        &self,
        sender: &[usize],
        via: &[usize],
        mut take: impl FnMut(&mut State) -> Option<T>,
    ) -> Result<T, NcclError> {
        let mut st = self.lock();
        loop {
            if st.aborted {
                return Err(aborted());
            }
            if st.closing {
                return Err(destroyed());
            }
            if let Some(v) = take(&mut st) {
                return Ok(v);
            }
            // A reported failure says more than the end of a connection it caused.
            if let Some(e) = &st.broken {
                return Err(e.clone());
            }
            if let Some(e) = sender.iter().find_map(|&k| st.left[k].as_ref()) {
                return Err(e.clone());
            }
            if let Some(e) = via.iter().find_map(|&k| st.lost[k].as_ref()) {
                return Err(e.clone());
            }
            st = self
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Records why no more data can come (and, for a lost connection, whose). Rank 0 first
    /// tells every other rank (but `origin`, where the news came from), and only then lets its
    /// own waits see it: its caller may abort as soon as it does, and the others must have
    /// heard the reason by then, not just a closed socket.
    fn set_broken(&self, e: NcclError, origin: Option<usize>) {
        {
            let mut st = self.lock();
            if st.breaking || st.closing {
                return;
            }
            st.breaking = true;
        }
        if self.is_hub() {
            let msg = Msg::Error {
                code: e.code() as u32,
                message: e.message().to_string(),
            };
            let _in_order = lock(&self.relay);
            for k in 1..self.nranks {
                if Some(k) != origin
                    && let Some(p) = self.peer(k)
                {
                    // A peer that cannot be told is gone; its own reader reports that.
                    let _ = p.send(&msg);
                }
            }
        }
        let mut st = self.lock();
        st.broken = Some(e);
        self.changed.notify_all();
    }

    /// Records the end of job `ticket`.
    fn finish(&self, ticket: u64, outcome: Result<(), NcclError>) {
        if let Err(e) = &outcome {
            let (first, spread, quiet) = {
                let st = self.lock();
                // A failure of this rank's own (not news from a peer, not an abort) is news
                // for the others.
                (st.failed.is_none(), !st.breaking && !st.closing, st.aborted)
            };
            if first && !quiet {
                eprintln!(
                    "convoy-nccl-emu: rank {} of {}: {e} ({})",
                    self.rank,
                    self.nranks,
                    e.code().name()
                );
            }
            // Told before the failure is published: the caller may abort as soon as it sees
            // it, and the others must hear this rank's reason, not just its socket closing.
            if first && spread {
                self.spread(e);
            }
        }
        let mut st = self.lock();
        if let Err(e) = outcome
            && st.failed.is_none()
        {
            st.failed = Some((ticket, e));
        }
        st.completed = st.completed.max(ticket);
        self.changed.notify_all();
    }

    fn spread(&self, e: &NcclError) {
        let e = e.reported_by(self.rank);
        if self.is_hub() {
            self.set_broken(e, None);
        } else if let Some(hub) = self.peer(0) {
            let _ = hub.send(&Msg::Error {
                code: e.code() as u32,
                message: e.message().to_string(),
            });
        }
    }

    // ---- the worker ----

    fn work(self: Arc<Self>, ctx: Context, jobs: Receiver<(u64, Job)>) {
        let mem = memory();
        let mut seq = 0u64;
        while let Ok((ticket, job)) = jobs.recv() {
            let earlier = self.lock().failed.as_ref().map(|(_, e)| e.clone());
            let outcome = match earlier {
                Some(e) => Err(e),
                None => catch_unwind(AssertUnwindSafe(|| self.run(job, ctx, mem, &mut seq)))
                    .unwrap_or_else(|p| {
                        let what = p
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        Err(NcclError::Internal(format!("the worker panicked: {what}")))
                    }),
            };
            self.finish(ticket, outcome);
        }
    }

    fn run(
        self: &Arc<Self>,
        job: Job,
        ctx: Context,
        mem: &Memory,
        seq: &mut u64,
    ) -> Result<(), NcclError> {
        match job {
            Job::Init(id) => match self.is_hub() {
                true => self.init_hub(&id),
                false => self.init_spoke(&id),
            },
            Job::Ops(ops) => {
                // Sends never wait, so issuing them all first lets any order of sends and
                // receives inside a group complete.
                for op in ops.iter().filter(|o| matches!(o.what, OpKind::Send { .. })) {
                    self.op(op, ctx, mem, seq)?;
                }
                for op in ops
                    .iter()
                    .filter(|o| !matches!(o.what, OpKind::Send { .. }))
                {
                    self.op(op, ctx, mem, seq)?;
                }
                Ok(())
            }
            Job::Finalize => {
                if self.is_hub() {
                    for k in 1..self.nranks {
                        if let Some(p) = self.peer(k) {
                            let _ = p.send(&Msg::Bye);
                        }
                    }
                } else if let Some(hub) = self.peer(0) {
                    let _ = hub.send(&Msg::Bye);
                }
                Ok(())
            }
        }
    }

    fn op(&self, op: &Op, ctx: Context, mem: &Memory, seq: &mut u64) -> Result<(), NcclError> {
        mem.bind(if op.ctx != 0 { op.ctx } else { ctx })?;
        // Work queued on the stream before the call (the kernels that wrote the input, or still
        // read the output buffer) completes first.
        mem.sync(op.stream)?;
        match op.what {
            OpKind::Collective { call, send, recv } => {
                let s = *seq;
                *seq += 1;
                let kill = fault::planned()?.filter(|k| k.at == s + 1);
                match self.is_hub() {
                    true => self.collective_hub(s, call, send, recv, mem, kill),
                    false => self.collective_spoke(s, call, send, recv, mem, kill),
                }
            }
            OpKind::Send { peer, buf, bytes } => {
                // SAFETY: the caller of ncclSend guaranteed `bytes` readable bytes at `buf`
                // until the operation completes.
                let data = unsafe { mem.read(buf, bytes) }?;
                self.send_p2p(peer, data)
            }
            OpKind::Recv { peer, buf, bytes } => {
                // Rank 0 hears from each rank directly; the others through rank 0, which relays
                // even after its own goodbye.
                let via = if self.is_hub() { peer } else { 0 };
                let data = self.wait_for(&[peer], &[via], |st| st.p2p[peer].pop_front())?;
                if data.len() != bytes {
                    return Err(NcclError::InvalidUsage(format!(
                        "rank {peer} sent {} bytes, rank {} received into {bytes}",
                        data.len(),
                        self.rank
                    )));
                }
                // SAFETY: the caller of ncclRecv guaranteed `bytes` writable bytes at `buf`.
                unsafe { mem.write(buf, &data) }
            }
        }
    }

    fn send_p2p(&self, to: usize, data: Vec<u8>) -> Result<(), NcclError> {
        if to == self.rank {
            lock(&self.state).p2p[to].push_back(data);
            self.changed.notify_all();
            return Ok(());
        }
        let (via, peer) = match self.is_hub() {
            true => (to, 0),
            false => (0, to),
        };
        let Some(p) = self.peer(via) else {
            return Err(NcclError::Remote(format!("rank {via} is not connected")));
        };
        p.send(&Msg::P2p {
            peer: peer as u32,
            data,
        })
        .map_err(|e| NcclError::Remote(format!("sending to rank {to} through rank {via}: {e}")))
    }

    fn collective_hub(
        &self,
        seq: u64,
        call: Call,
        send: u64,
        recv: u64,
        mem: &Memory,
        kill: Option<&fault::Kill>,
    ) -> Result<(), NcclError> {
        let n = self.nranks;
        let size = call.dtype.size();
        let bytes = |elems: u64| elems as usize * size;
        // SAFETY: the caller of the collective guaranteed its send buffer (sizes checked when
        // the call was made) until the operation completes.
        let mine = unsafe { mem.read(send, bytes(call.send_elems(0, n))) }?;
        let mut inputs = Vec::with_capacity(n);
        inputs.push(mine);
        for k in 1..n {
            let (their_seq, theirs, data) =
                self.wait_for(&[k], &[k], |st| st.contribs[k].pop_front())?;
            if their_seq != seq || theirs != call {
                return Err(NcclError::InvalidUsage(format!(
                    "ranks called different collectives: rank 0's collective #{seq} is {}, \
                     rank {k}'s #{their_seq} is {}",
                    call.describe(),
                    theirs.describe()
                )));
            }
            let want = bytes(call.send_elems(k, n));
            if data.len() != want {
                return Err(NcclError::Internal(format!(
                    "rank {k} sent {} bytes for {}, not {want}",
                    data.len(),
                    call.describe()
                )));
            }
            inputs.push(data);
        }
        // Every other rank has sent its part and waits for its result.
        if let Some(k) = kill {
            return Err(self.die(k, seq, &call));
        }
        let refs: Vec<&[u8]> = inputs.iter().map(|v| &v[..]).collect();
        let root = call.root as usize;
        let outputs: Vec<Vec<u8>> = match call.kind {
            CollKind::AllReduce => vec![reduce(call.dtype, call.op, &refs); n],
            CollKind::Reduce => {
                let mut out = vec![Vec::new(); n];
                out[root] = reduce(call.dtype, call.op, &refs);
                out
            }
            CollKind::Broadcast => vec![inputs[root].clone(); n],
            CollKind::AllGather => vec![inputs.concat(); n],
            CollKind::ReduceScatter => {
                let all = reduce(call.dtype, call.op, &refs);
                all.chunks(bytes(call.count).max(1))
                    .take(n)
                    .map(<[u8]>::to_vec)
                    .chain(std::iter::repeat(Vec::new()))
                    .take(n)
                    .collect()
            }
        };
        let mut outputs = outputs.into_iter();
        let mine = outputs.next().unwrap_or_default();
        let in_order = lock(&self.relay);
        for (k, data) in (1..n).zip(outputs) {
            if let Some(p) = self.peer(k) {
                // A rank that cannot be sent its result is gone: its reader reports that, and
                // the others still get theirs.
                let _ = p.send(&Msg::Result { seq, data });
            }
        }
        drop(in_order);
        // SAFETY: the caller of the collective guaranteed its receive buffer.
        unsafe { mem.write(recv, &mine) }
    }

    fn collective_spoke(
        &self,
        seq: u64,
        call: Call,
        send: u64,
        recv: u64,
        mem: &Memory,
        kill: Option<&fault::Kill>,
    ) -> Result<(), NcclError> {
        // Before this rank's part is sent: rank 0 cannot finish the collective without it.
        if let Some(k) = kill {
            return Err(self.die(k, seq, &call));
        }
        let (rank, n) = (self.rank, self.nranks);
        let size = call.dtype.size();
        // SAFETY: the caller of the collective guaranteed its send buffer until the operation
        // completes.
        let data = unsafe { mem.read(send, call.send_elems(rank, n) as usize * size) }?;
        let hub = self
            .peer(0)
            .ok_or_else(|| NcclError::Remote("rank 0 is not connected".into()))?;
        if hub.send(&Msg::Contrib { seq, call, data }).is_err() {
            // Rank 0's end is closed: the reader is about to say why (rank 0's own report,
            // then its end of file).
            return match self.wait_for(&[0], &[0], |_| None::<()>) {
                Err(e) => Err(e),
                Ok(()) => Err(NcclError::Internal("lost rank 0".into())),
            };
        }
        let (their_seq, out) = self.wait_for(&[0], &[0], |st| st.results.pop_front())?;
        let want = call.recv_elems(rank, n) as usize * size;
        if their_seq != seq || out.len() != want {
            return Err(NcclError::Internal(format!(
                "rank 0 answered collective #{seq} ({}) with #{their_seq} of {} bytes, not {want}",
                call.describe(),
                out.len()
            )));
        }
        // SAFETY: the caller of the collective guaranteed its receive buffer.
        unsafe { mem.write(recv, &out) }
    }

    /// Test support (see [`fault`]): SIGKILLs this process inside collective `seq`, after
    /// waiting for the kill's file if it names one. Returns only when the communicator is
    /// aborted or destroyed during that wait (or, impossibly, when SIGKILL did not kill).
    fn die(&self, kill: &fault::Kill, seq: u64, call: &Call) -> NcclError {
        let who = format!(
            "convoy-nccl-emu: rank {} of {}: {}={}",
            self.rank,
            self.nranks,
            fault::KILL_AT,
            kill.at
        );
        let what = format!("{} (collective #{seq})", call.describe());
        if let Some(file) = &kill.when {
            eprintln!("{who}: in {what}; SIGKILL once {} exists", file.display());
            while !file.exists() {
                {
                    let st = self.lock();
                    if st.aborted {
                        return aborted();
                    }
                    if st.closing {
                        return destroyed();
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        eprintln!("{who}: SIGKILL in {what}");
        // SAFETY: kill(2) on this process's own pid, with a signal that cannot be caught: it
        // touches no memory, and nothing runs after it in this process.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        NcclError::Internal(format!("{who}: SIGKILL did not end the process"))
    }

    // ---- setup ----

    fn init_hub(self: &Arc<Self>, id: &RendezvousId) -> Result<(), NcclError> {
        if self.nranks == 1 {
            return Ok(());
        }
        let path = &id.path;
        let listener = UnixListener::bind(path).map_err(|e| {
            NcclError::System(format!(
                "rank 0 could not listen on {}: {e}",
                path.display()
            ))
        })?;
        self.lock().bound = Some(path.clone());
        listener.set_nonblocking(true).map_err(|e| {
            NcclError::System(format!(
                "making the listener on {} non-blocking: {e}",
                path.display()
            ))
        })?;
        let mut backoff = Backoff::new();
        loop {
            {
                let st = self.lock();
                if st.aborted {
                    return Err(aborted());
                }
                if st.closing {
                    return Err(destroyed());
                }
                if let Some(e) = &st.broken {
                    return Err(e.clone());
                }
                if st.joined_count == self.nranks - 1 {
                    break;
                }
            }
            match listener.accept() {
                Ok((sock, _)) => {
                    sock.set_nonblocking(false).map_err(|e| {
                        NcclError::System(format!("configuring a rank's connection: {e}"))
                    })?;
                    let peer = Peer::new(sock);
                    self.add_conn(&peer)?;
                    let shared = self.clone();
                    let token = id.token;
                    self.spawn_reader("accept", move || shared.hub_reader(&peer, token))?;
                    backoff = Backoff::new();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => backoff.pause(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(NcclError::System(format!(
                        "rank 0 accepting on {}: {e}",
                        path.display()
                    )));
                }
            }
        }
        // Everyone is here: the file is not needed any more.
        drop(listener);
        if let Some(p) = self.lock().bound.take() {
            let _ = std::fs::remove_file(p);
        }
        for k in 1..self.nranks {
            if let Some(p) = self.peer(k) {
                let _ = p.send(&Msg::Ready);
            }
        }
        match self.lock().broken.clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn init_spoke(self: &Arc<Self>, id: &RendezvousId) -> Result<(), NcclError> {
        let path = &id.path;
        let mut backoff = Backoff::new();
        let sock = loop {
            {
                let st = self.lock();
                if st.aborted {
                    return Err(aborted());
                }
                if st.closing {
                    return Err(destroyed());
                }
            }
            match UnixStream::connect(path) {
                Ok(s) => break s,
                // Rank 0 is not listening yet (or its backlog is full): try again.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound
                            | io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::WouldBlock
                    ) =>
                {
                    backoff.pause()
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(NcclError::System(format!(
                        "rank {} could not connect to rank 0 at {}: {e}",
                        self.rank,
                        path.display()
                    )));
                }
            }
        };
        let hub = Peer::new(sock);
        self.add_conn(&hub)?;
        lock(&self.peers)[0] = Some(hub.clone());
        hub.send(&Msg::Hello {
            token: id.token,
            rank: self.rank as u32,
            nranks: self.nranks as u32,
        })
        .map_err(|e| NcclError::Remote(format!("lost rank 0 while joining: {e}")))?;
        let shared = self.clone();
        self.spawn_reader("0", move || shared.spoke_reader(&hub))?;
        self.wait_for(&[0], &[0], |st| st.ready.then_some(()))
    }

    fn spawn_reader(&self, name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), NcclError> {
        let h = std::thread::Builder::new()
            .name(format!("nccl-emu-r{}-{name}", self.rank))
            .spawn(f)
            .map_err(|e| NcclError::System(format!("starting a reader thread: {e}")))?;
        lock(&self.readers).push(h);
        Ok(())
    }

    // ---- readers ----

    /// Rank 0's side of one connection: the hello, then everything the rank sends.
    fn hub_reader(&self, peer: &Arc<Peer>, token: [u8; 16]) {
        let rank = match read_msg(&peer.sock, HELLO_LIMIT) {
            Ok(Some(Msg::Hello {
                token: t,
                rank,
                nranks,
            })) if t == token => match self.join(rank as usize, nranks as usize, peer) {
                Ok(rank) => rank,
                Err(e) => {
                    let _ = peer.send(&Msg::Error {
                        code: e.code() as u32,
                        message: e.message().to_string(),
                    });
                    self.set_broken(e, None);
                    return;
                }
            },
            // Not a rank of this communicator: ignored.
            _ => return,
        };
        loop {
            match read_msg(&peer.sock, MAX_PAYLOAD) {
                Ok(Some(msg)) => self.hub_receive(rank, msg),
                Ok(None) => return self.disconnected(rank, None),
                Err(e) => return self.disconnected(rank, Some(e)),
            }
        }
    }

    fn join(&self, rank: usize, nranks: usize, peer: &Arc<Peer>) -> Result<usize, NcclError> {
        if nranks != self.nranks {
            return Err(NcclError::InvalidUsage(format!(
                "rank {rank} joined as one of {nranks} ranks, rank 0 as one of {}",
                self.nranks
            )));
        }
        if rank == 0 || rank >= nranks {
            return Err(NcclError::InvalidUsage(format!(
                "a process joined as rank {rank} of {nranks}, which rank 0 is or does not exist"
            )));
        }
        let mut st = self.lock();
        if st.joined[rank] {
            return Err(NcclError::InvalidUsage(format!(
                "two processes joined as rank {rank}"
            )));
        }
        lock(&self.peers)[rank] = Some(peer.clone());
        st.joined[rank] = true;
        st.joined_count += 1;
        self.changed.notify_all();
        Ok(rank)
    }

    fn hub_receive(&self, from: usize, msg: Msg) {
        match msg {
            Msg::Contrib { seq, call, data } => {
                self.lock().contribs[from].push_back((seq, call, data));
                self.changed.notify_all();
            }
            Msg::P2p { peer: 0, data } => {
                self.lock().p2p[from].push_back(data);
                self.changed.notify_all();
            }
            Msg::P2p { peer, data } => {
                if let Some(p) = self.peer(peer as usize) {
                    // A destination that is gone is reported by its own reader.
                    let _ = p.send(&Msg::P2p {
                        peer: from as u32,
                        data,
                    });
                }
            }
            Msg::Error { code, message } => {
                self.set_broken(NcclError::from_code(code, message), Some(from));
            }
            Msg::Bye => {
                let left = NcclError::Remote(format!("rank {from} has destroyed its communicator"));
                self.lock().left[from] = Some(left);
                self.changed.notify_all();
                // After every relay of its data (this thread forwarded those first), so the
                // others' receives from it still find what it sent.
                for k in 1..self.nranks {
                    if k != from
                        && let Some(p) = self.peer(k)
                    {
                        let _ = p.send(&Msg::Left { rank: from as u32 });
                    }
                }
            }
            other => self.set_broken(
                NcclError::Internal(format!("rank {from} sent rank 0 {other:?}")),
                None,
            ),
        }
    }

    /// Another rank's side of its connection to rank 0.
    fn spoke_reader(&self, hub: &Arc<Peer>) {
        loop {
            let msg = match read_msg(&hub.sock, MAX_PAYLOAD) {
                Ok(Some(msg)) => msg,
                Ok(None) => return self.disconnected(0, None),
                Err(e) => return self.disconnected(0, Some(e)),
            };
            match msg {
                Msg::Ready => {
                    self.lock().ready = true;
                    self.changed.notify_all();
                }
                Msg::Result { seq, data } => {
                    self.lock().results.push_back((seq, data));
                    self.changed.notify_all();
                }
                Msg::P2p { peer, data } if (peer as usize) < self.nranks => {
                    self.lock().p2p[peer as usize].push_back(data);
                    self.changed.notify_all();
                }
                Msg::Error { code, message } => {
                    self.set_broken(NcclError::from_code(code, message), None);
                }
                Msg::Bye => {
                    self.lock().left[0] = Some(NcclError::Remote(
                        "rank 0 has destroyed its communicator".into(),
                    ));
                    self.changed.notify_all();
                }
                Msg::Left { rank } if (rank as usize) < self.nranks => {
                    self.lock().left[rank as usize] = Some(NcclError::Remote(format!(
                        "rank {rank} has destroyed its communicator"
                    )));
                    self.changed.notify_all();
                }
                other => self.set_broken(
                    NcclError::Internal(format!("rank 0 sent rank {} {other:?}", self.rank)),
                    None,
                ),
            }
        }
    }

    /// A connection ended: expected during teardown, or after a goodbye (then it only ends
    /// rank 0's relays), else the peer is lost and the communicator broken.
    fn disconnected(&self, rank: usize, err: Option<io::Error>) {
        let said_bye = {
            let mut st = self.lock();
            if st.closing {
                return;
            }
            if st.left[rank].is_some() {
                st.lost[rank] = st.left[rank].clone();
                self.changed.notify_all();
                true
            } else {
                false
            }
        };
        if said_bye {
            return;
        }
        let how = match err {
            None => "closed".to_string(),
            Some(e) => format!("failed ({e})"),
        };
        let e = match self.is_hub() {
            true => NcclError::Remote(format!(
                "rank {rank}'s connection {how} before it finalized its communicator: the \
                 process exited, was killed, or aborted"
            )),
            false => NcclError::Remote(format!(
                "the connection to rank 0 {how} before it finalized its communicator: the \
                 process exited, was killed, or aborted"
            )),
        };
        // Broken (and the others told) before the loss is visible to the worker.
        self.set_broken(e.clone(), Some(rank));
        self.lock().lost[rank] = Some(e);
        self.changed.notify_all();
    }
}
