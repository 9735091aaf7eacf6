//! The coordinator's one I/O loop: the only owner of the [`LoggedState`] (state + log).
//!
//! gRPC handlers turn requests into [`Request`]s and wait for the reply; the loop, on its own
//! thread, takes every request that arrived while it was busy, logs their commands with one
//! flush (group commit), applies them, replies, and carries out the effects: assignments
//! pushed to workers' streams, rendezvous answers, job events in the job's log. Between
//! batches it ticks the clock (losing silent workers and stalled jobs) and runs the scheduler.
//! Handlers never touch the state, so every change is serialised through `apply`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use convoy_proto::v1 as pb;
use prost::Message;
use tokio::sync::{mpsc, watch};

use crate::checkpoints::CheckpointStore;
use crate::error::{ApplyError, StoreError};
use crate::identity::{Credentials, secrets};
use crate::log::SledLog;
use crate::log::codec::RecordOp;
use crate::logged_state::LoggedState;
use crate::model::{JobId, Liveness, Millis, WorkerId};
use crate::replication::{Inbound, MemberOp, Membership, Outbox, RaftStorage, ReplicatedState};
use crate::scheduler::{WaitReason, schedule_at};
use crate::server::clock::now_ms;
use crate::server::convert;
use crate::server::leadership::Leadership;
use crate::server::records::{Records, event_line};
use crate::server::rendezvous::RendezvousTable;
use crate::server::request::{Published, RankKey, Reply, Request, View};
use crate::server::settings::ClusterSettings;
use crate::state::{ClusterConfig, ClusterState, Command, Effect};

/// Settings of the loop that are not replicated state.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    /// How often the clock ticks (loss and stall detection, scheduling).
    pub tick: Duration,
    /// A job's step progress is logged at most this often (metrics are kept for every step).
    pub progress_log_interval: Duration,
    /// How long a finished job's logs and metrics are kept (`None`: for ever).
    pub records_retention: Option<Duration>,
}

/// How often finished jobs' records are checked against the retention.
const RECORDS_SWEEP: Duration = Duration::from_secs(3600);

/// Raft's clock: heartbeats and election timeouts are counted in these (see
/// `replication::HEARTBEAT_TICKS`).
pub const RAFT_TICK: Duration = Duration::from_millis(20);

/// A replicated coordinator: who it is among whom, and how to reach them.
pub struct ReplicaSetup {
    /// This member, the others and their addresses (the port that serves peers serves
    /// clients too: a refusal names the leader's).
    pub membership: Arc<Membership>,
    pub storage: RaftStorage,
    pub outbox: Outbox,
    /// A new member of a running cluster: wait for the leader's snapshot rather than start a
    /// new cluster.
    pub join: bool,
    pub snapshot_every: u64,
    /// The cluster settings this member was started with: a leader applies them.
    pub settings: ClusterSettings,
}

/// The state and its log: on one machine, or replicated through Raft.
enum Core {
    Single(Box<LoggedState<SledLog>>),
    Replicated(Box<Replicated>),
}

type ReadFn = Box<dyn FnOnce(&View<'_>) + Send>;

/// A replicated leader's reads, from arrival to answer: each turn's reads share one read
/// index; once it is confirmed they wait until the state has applied it.
#[derive(Default)]
struct Reads {
    unsent: Vec<ReadFn>,
    next: u64,
    asked: BTreeMap<u64, Vec<ReadFn>>,
    /// (the index to wait for, the reads).
    confirmed: Vec<(u64, Vec<ReadFn>)>,
}

/// What a proposer waits with: the commands' requests, and the records' writers.
type Token = (Vec<ReplyTo>, Vec<Reply<Result<(), ApplyError>>>);

struct Replicated {
    state: ReplicatedState<Token>,
    outbox: Outbox,
    /// Shared with the transport and the services; updated as membership changes apply.
    membership: Arc<Membership>,
    settings: ClusterSettings,
}

impl Core {
    fn state(&self) -> &ClusterState {
        match self {
            Core::Single(c) => c.state(),
            Core::Replicated(r) => r.state.state(),
        }
    }

    /// Whether this coordinator decides: always when single, as the serving leader when
    /// replicated. Only the one that decides ticks, schedules and carries out effects.
    fn leads(&self) -> bool {
        match self {
            Core::Single(_) => true,
            Core::Replicated(r) => r.state.serving(),
        }
    }

    fn leadership(&self) -> Leadership {
        match self {
            Core::Single(c) => Leadership {
                applied: c.applied(),
                commit: c.applied(),
                ..Leadership::single()
            },
            Core::Replicated(r) => {
                let replica = r.state.replica();
                let leader = replica.leader();
                let book = r.state.members();
                Leadership {
                    serving: r.state.serving(),
                    node_id: r.state.node_id(),
                    leader,
                    leader_url: book.addresses.get(&leader).cloned(),
                    members: book.voters().len(),
                    term: replica.term(),
                    role: replica.role(),
                    commit: replica.commit_index(),
                    applied: r.state.applied(),
                    member_list: r.membership.canonical(),
                }
            }
        }
    }
}

/// Who waits for a command's result, and what they expect back.
enum ReplyTo {
    Submit(Reply<Result<JobId, ApplyError>>),
    Unit(Reply<Result<(), ApplyError>>),
    Register(Reply<Result<(WorkerId, String), ApplyError>>),
    Heartbeat {
        worker: WorkerId,
        running: Vec<RankKey>,
        reply: Reply<Result<(), ApplyError>>,
    },
    /// Issued by the loop itself (scheduler decisions, ticks, recovery).
    Internal,
}

pub struct EventLoop {
    core: Core,
    leadership: watch::Sender<Leadership>,
    /// What the services authenticate requests against (see `server::auth`).
    credentials: watch::Sender<Arc<Credentials>>,
    /// The latest time stamped into a command here (see `ReplicatedState::clock` for the
    /// replicated log's).
    clock: Millis,
    records: Arc<Records>,
    config: LoopConfig,
    streams: HashMap<WorkerId, mpsc::UnboundedSender<pb::Assignment>>,
    rendezvous: RendezvousTable,
    latest: HashMap<JobId, pb::StepMetrics>,
    progress_logged: HashMap<JobId, Instant>,
    waiting: HashMap<JobId, WaitReason>,
    /// Something changed that the scheduler may act on.
    dirty: bool,
    /// Stopping (see [`Request::Drain`]).
    draining: bool,
    /// Replicated: reads waiting for a read index.
    reads: Reads,
    /// Replicated: the checkpoint store, for the deletions the log carries.
    checkpoints: Option<CheckpointStore>,
    /// Replicated: records to propose with the next entry, and who waits for them.
    records_out: Vec<RecordOp>,
    records_waiting: Vec<Reply<Result<(), ApplyError>>>,
}

impl EventLoop {
    pub fn new(core: LoggedState<SledLog>, records: Arc<Records>, config: LoopConfig) -> Self {
        Self::with_core(Core::Single(Box::new(core)), records, config)
    }

    /// A member of a replicated coordinator; `config` is what a new cluster starts from.
    pub fn replicated(
        setup: ReplicaSetup,
        config: ClusterConfig,
        records: Arc<Records>,
        loop_config: LoopConfig,
    ) -> Result<Self, StoreError> {
        let given = setup.membership.book().clone();
        let state = ReplicatedState::open(
            setup.membership.node_id,
            &given,
            setup.join,
            setup.storage,
            config,
            setup.snapshot_every,
        )?;
        setup.membership.set_book(state.members().clone());
        let core = Core::Replicated(Box::new(Replicated {
            state,
            outbox: setup.outbox,
            membership: setup.membership,
            settings: setup.settings,
        }));
        Ok(Self::with_core(core, records, loop_config))
    }

    fn with_core(core: Core, records: Arc<Records>, config: LoopConfig) -> Self {
        let (leadership, _) = watch::channel(core.leadership());
        let (credentials, _) = watch::channel(Arc::new(Credentials::of(core.state())));
        EventLoop {
            core,
            leadership,
            credentials,
            clock: 0,
            records,
            config,
            streams: HashMap::new(),
            rendezvous: RendezvousTable::default(),
            latest: HashMap::new(),
            progress_logged: HashMap::new(),
            waiting: HashMap::new(),
            dirty: true,
            draining: false,
            records_out: vec![],
            records_waiting: vec![],
            reads: Reads::default(),
            checkpoints: None,
        }
    }

    /// The checkpoint store a replica removes deleted jobs' checkpoints from.
    pub fn with_checkpoints(mut self, store: CheckpointStore) -> Self {
        self.checkpoints = Some(store);
        self
    }

    /// Runs until a [`Request::Shutdown`] (or every sender is gone). A storage failure ends
    /// the loop with the error: the coordinator cannot promise durability without its log.
    pub fn run(mut self, rx: std_mpsc::Receiver<Request>) -> Result<(), StoreError> {
        let replicated = matches!(self.core, Core::Replicated(_));
        if !replicated {
            self.recovered()?;
            self.choose_key()?;
            self.sweep_records();
        }
        let mut last_tick = Instant::now();
        let mut last_sweep = Instant::now();
        let mut last_raft_tick = Instant::now();
        let wait = if replicated {
            RAFT_TICK.min(self.config.tick)
        } else {
            self.config.tick
        };
        // The loop turns at least every tick; systemd restarts a coordinator whose loop stops.
        let mut watchdog = convoy_service::ready::Watchdog::from_env();
        loop {
            watchdog.pet();
            let mut batch = vec![];
            match rx.recv_timeout(wait) {
                Ok(r) => batch.push(r),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < 8192 {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let stop = self.handle(batch)?;
            self.ask_read_index();
            if replicated && last_raft_tick.elapsed() >= RAFT_TICK {
                last_raft_tick = Instant::now();
                if let Core::Replicated(r) = &mut self.core {
                    r.state.tick();
                }
            }
            self.drive()?;
            if self.draining {
                if stop {
                    break;
                }
                continue;
            }
            // Every replica keeps its own records store within the retention.
            if last_sweep.elapsed() >= RECORDS_SWEEP {
                last_sweep = Instant::now();
                self.sweep_records();
            }
            if self.core.leads() {
                if last_tick.elapsed() >= self.config.tick {
                    last_tick = Instant::now();
                    self.tick()?;
                    self.promote_learners();
                }
                // A replicated plan waits for the previous one to be applied: planning on a
                // state that lacks it would only propose starts the state machine rejects.
                if self.dirty && !self.proposing() {
                    self.schedule()?;
                }
                // Records this turn produced (job events, metrics) that no command carried.
                if !self.records_out.is_empty() {
                    self.execute(vec![], vec![])?;
                }
            }
            if stop {
                break;
            }
        }
        match &mut self.core {
            Core::Single(c) => c.snapshot(),
            Core::Replicated(r) => r.state.snapshot(),
        }
    }

    /// As leader: proposes making a learner that has caught up a voter.
    fn promote_learners(&mut self) {
        let Core::Replicated(r) = &mut self.core else {
            return;
        };
        if let Some(node) = r.state.learner_to_promote() {
            match r
                .state
                .propose_member_change(MemberOp::Promote { node }, (vec![], vec![]))
            {
                Ok(()) => tracing::info!("coordinator {node} has caught up: promoting it to voter"),
                Err(e) => tracing::warn!("promoting coordinator {node}: {e}"),
            }
        }
    }

    /// The leadership the loop publishes after each turn; the services gate on it.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.subscribe()
    }

    /// The credentials the loop publishes whenever they change; the services' doors check
    /// requests against them.
    pub fn credentials(&self) -> watch::Receiver<Arc<Credentials>> {
        self.credentials.subscribe()
    }

    fn publish_credentials(&self) {
        let state = self.core.state();
        if self.credentials.borrow().epoch != state.identities.epoch {
            self.credentials
                .send_replace(Arc::new(Credentials::of(state)));
        }
    }

    /// The first coordinator to serve a cluster chooses the key worker and rank credentials
    /// derive from; it is part of the state from then on.
    fn choose_key(&mut self) -> Result<(), StoreError> {
        if !self.core.state().identities.key.is_empty() {
            return Ok(());
        }
        let key = secrets::new_key();
        self.execute(
            vec![Command::SetCredentialKey { key }],
            vec![ReplyTo::Internal],
        )
    }

    /// The time to stamp into a command: the clock, but never before a command already
    /// applied.
    fn now(&mut self) -> Millis {
        let wall = match &self.core {
            Core::Single(_) => now_ms(),
            Core::Replicated(r) => r.state.clock(now_ms()),
        };
        self.clock = self.clock.max(wall);
        self.clock
    }

    fn proposing(&self) -> bool {
        matches!(&self.core, Core::Replicated(r) if r.state.proposals_in_flight() > 0)
    }

    /// Replicated: persists and sends what Raft has ready, applies what committed, answers
    /// the requests this member proposed, and takes up or lays down leadership.
    fn drive(&mut self) -> Result<(), StoreError> {
        let Core::Replicated(r) = &mut self.core else {
            return Ok(());
        };
        let mut adv = r.state.advance()?;
        if let Some(book) = adv.members.take() {
            r.membership.set_book(book);
        }
        for m in adv.messages.drain(..) {
            r.outbox.send(m);
        }
        if adv.removed {
            return Err(StoreError::Removed {
                node: r.state.node_id(),
            });
        }
        let leads = r.state.serving();
        if adv.restored {
            self.latest.clear();
            self.dirty = true;
        }
        for a in adv.applied {
            self.records.apply(&a.records);
            self.forget_checkpoints(&a.records);
            match a.token {
                Some((reply_to, waiting)) => {
                    self.finish(&a.commands, a.results, reply_to);
                    for w in waiting {
                        let _ = w.send(Ok(()));
                    }
                }
                // What the previous leader proposed still has effects to carry out.
                None if leads => {
                    let reply_to = a.commands.iter().map(|_| ReplyTo::Internal).collect();
                    self.finish(&a.commands, a.results, reply_to);
                }
                None => {}
            }
        }
        if !leads {
            // Records not yet proposed are the leader's to write; their writers are refused.
            self.records_out.clear();
            self.records_waiting.clear();
        }
        if !leads && !self.streams.is_empty() {
            // Workers' streams end, and they look for the new leader.
            self.streams.clear();
            self.rendezvous = RendezvousTable::default();
            self.waiting.clear();
        }
        self.publish_leadership();
        self.publish_credentials();
        // Their handlers, woken by this, answer with the leadership just published: the
        // leader's address, or that there is none. Clients retry accordingly.
        drop(adv.abandoned);
        self.answer_reads(adv.reads, leads);
        if adv.began_serving {
            tracing::info!("leading the cluster from index {}", self.core_applied());
            self.recovered()?;
            self.apply_given_settings()?;
            self.choose_key()?;
            self.dirty = true;
        }
        Ok(())
    }

    /// Removes the checkpoints of jobs deleted without keeping them, and those retention let
    /// go (see `RecordOp`). Done in the loop, in log order, so that once the entry is applied
    /// the files are gone.
    fn forget_checkpoints(&self, ops: &[RecordOp]) {
        let Some(store) = &self.checkpoints else {
            return;
        };
        for op in ops {
            let (job, removed) = match op {
                RecordOp::ForgetJob {
                    job,
                    checkpoints: true,
                } => (job, store.remove_job(*job).map(|_| ())),
                RecordOp::ForgetCheckpoints { job, steps } => {
                    (job, store.forget_steps(*job, steps).map(|_| ()))
                }
                _ => continue,
            };
            if let Err(e) = removed {
                tracing::warn!("removing checkpoints of {job}: {e}");
            }
        }
    }

    fn run_read(&self, f: ReadFn) {
        f(&View {
            state: self.core.state(),
            latest: &self.latest,
            waiting: &self.waiting,
        });
    }

    /// Asks for one read index for the reads that arrived this turn.
    fn ask_read_index(&mut self) {
        let Core::Replicated(r) = &mut self.core else {
            return;
        };
        if self.reads.unsent.is_empty() {
            return;
        }
        let reads = std::mem::take(&mut self.reads.unsent);
        let ctx = self.reads.next;
        self.reads.next += 1;
        if r.state.read_index(ctx) {
            self.reads.asked.insert(ctx, reads);
        }
        // Otherwise they are dropped: their handlers answer with the leadership.
    }

    /// Runs the reads whose read index the state has applied; drops all of them when this
    /// replica no longer leads.
    fn answer_reads(&mut self, confirmed: Vec<(u64, u64)>, leads: bool) {
        if !leads {
            self.reads = Reads {
                next: self.reads.next,
                ..Reads::default()
            };
            return;
        }
        for (ctx, index) in confirmed {
            if let Some(reads) = self.reads.asked.remove(&ctx) {
                self.reads.confirmed.push((index, reads));
            }
        }
        let applied = self.core_applied();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads.confirmed)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.reads.confirmed = waiting;
        for f in ready.into_iter().flat_map(|(_, reads)| reads) {
            self.run_read(f);
        }
    }

    /// Publishes who serves and how far the log is, when it changed.
    fn publish_leadership(&self) {
        let now = self.core.leadership();
        self.leadership.send_if_modified(|l| {
            let changed = *l != now;
            *l = now;
            changed
        });
    }

    fn core_applied(&self) -> u64 {
        match &self.core {
            Core::Single(c) => c.applied(),
            Core::Replicated(r) => r.state.applied(),
        }
    }

    /// A new leader brings the cluster's settings in line with those it was started with.
    fn apply_given_settings(&mut self) -> Result<(), StoreError> {
        let Core::Replicated(r) = &self.core else {
            return Ok(());
        };
        let stored = &r.state.state().config;
        let wanted = r.settings.applied_to(stored);
        if wanted != *stored {
            tracing::info!(
                "the cluster settings this coordinator was given replace the stored ones"
            );
            self.execute(vec![Command::Configure(wanted)], vec![ReplyTo::Internal])?;
        }
        Ok(())
    }

    /// After a restart every alive worker gets a fresh heartbeat timeout to reconnect in, and
    /// every running job a fresh progress timeout: the time the coordinator was down is not
    /// the workers' or the jobs' fault. Each job's latest step metrics come back from the
    /// records store, so listings show the same step and loss as before.
    fn recovered(&mut self) -> Result<(), StoreError> {
        // What each job last showed (step, loss), from its stored metrics.
        for job in self.core.state().jobs.values() {
            if !job.attempts.is_empty()
                && let Some(m) = self.records.last_step_metrics(job.id)?
            {
                self.latest.insert(job.id, m);
            }
        }
        let now = self.now();
        let state = self.core.state();
        let mut cmds: Vec<Command> = state
            .workers
            .values()
            .filter(|w| w.liveness == Liveness::Alive)
            .map(|w| Command::Heartbeat { worker: w.id, now })
            .collect();
        for job in state.jobs.values() {
            if let Some(a) = job.live_attempt() {
                let step = job.last_progress.map_or(0, |p| p.step);
                cmds.push(Command::ReportProgress {
                    job: job.id,
                    generation: a.generation,
                    step,
                    now,
                });
            }
        }
        let reply_to = cmds.iter().map(|_| ReplyTo::Internal).collect();
        self.execute(cmds, reply_to)
    }

    /// Handles one batch; true when asked to shut down.
    fn handle(&mut self, batch: Vec<Request>) -> Result<bool, StoreError> {
        let now = self.now();
        let leads = self.core.leads();
        let mut cmds = vec![];
        let mut reply_to = vec![];
        let mut later = vec![];
        let mut stop = false;
        for req in batch {
            let req = match req {
                Request::Peer(inbound) => {
                    if let Core::Replicated(r) = &mut self.core {
                        match inbound {
                            Inbound::Message(m) => r.state.step(m),
                            Inbound::LostLog(id) => r.state.peer_lost_log(id),
                            Inbound::NotAMember { peer, at } => r.state.refused_by(peer, at)?,
                        }
                    }
                    continue;
                }
                r @ (Request::Drain | Request::Shutdown | Request::ReadLocal(_)) => r,
                // Dropped: its handler answers with the leader's address.
                _ if !leads => continue,
                r => r,
            };
            match req {
                Request::Submit { mut submit, reply } => {
                    submit.now = now;
                    cmds.push(Command::SubmitJob(submit));
                    reply_to.push(ReplyTo::Submit(reply));
                }
                Request::Cancel { job, reply } => {
                    cmds.push(Command::CancelJob { job, now });
                    reply_to.push(ReplyTo::Unit(reply));
                }
                Request::Delete { job, reply } => {
                    cmds.push(Command::DeleteJob { job });
                    reply_to.push(ReplyTo::Unit(reply));
                }
                Request::CreateToken { mut token, reply } => {
                    token.created_at = now;
                    cmds.push(Command::CreateToken(token));
                    reply_to.push(ReplyTo::Unit(reply));
                }
                Request::RevokeToken { id, reply } => {
                    cmds.push(Command::RevokeToken { id });
                    reply_to.push(ReplyTo::Unit(reply));
                }
                Request::Resume { job, reply } => {
                    cmds.push(Command::ResumeJob { job });
                    reply_to.push(ReplyTo::Unit(reply));
                }
                Request::SetCordon {
                    worker,
                    cordoned,
                    reply,
                } => {
                    cmds.push(if cordoned {
                        Command::Cordon { worker }
                    } else {
                        Command::Uncordon { worker }
                    });
                    reply_to.push(ReplyTo::Unit(reply));
                }
                Request::Register {
                    name,
                    slots,
                    gpus,
                    instance,
                    reply,
                } => {
                    cmds.push(Command::RegisterWorker {
                        name,
                        slots,
                        gpus,
                        instance,
                        now,
                    });
                    reply_to.push(ReplyTo::Register(reply));
                }
                Request::Heartbeat {
                    worker,
                    running,
                    reply,
                } => {
                    cmds.push(Command::Heartbeat { worker, now });
                    reply_to.push(ReplyTo::Heartbeat {
                        worker,
                        running,
                        reply,
                    });
                }
                Request::RankExit { key, exit, reply } => {
                    cmds.push(Command::ReportRankExit {
                        job: key.job,
                        generation: key.generation,
                        rank: key.rank,
                        exit,
                        now,
                    });
                    reply_to.push(ReplyTo::Unit(reply));
                }
                Request::Progress {
                    key,
                    metrics,
                    reply,
                } => {
                    // Checked against the state now; logged only now and then (see config).
                    match self.progress(key, metrics, now) {
                        Ok(Some(cmd)) => {
                            cmds.push(cmd);
                            reply_to.push(ReplyTo::Unit(reply));
                        }
                        Ok(None) => {
                            let _ = reply.send(Ok(()));
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                Request::Drain => {
                    self.draining = true;
                    // Dropping the senders ends the assignment streams, which would otherwise
                    // hold the server's graceful shutdown open.
                    self.streams.clear();
                }
                Request::Shutdown => stop = true,
                Request::TransferLeader { to, reply } => {
                    let r = match &mut self.core {
                        Core::Single(_) => Err("this coordinator is not replicated".to_string()),
                        Core::Replicated(r) => {
                            let members = r.state.members().voters();
                            if r.state.transfer_leader(to, &members) {
                                Ok(())
                            } else {
                                Err(format!(
                                    "cannot hand leadership to {to}: members are {members:?}, \
                                     and this replica ({}) leads",
                                    r.state.node_id()
                                ))
                            }
                        }
                    };
                    let _ = reply.send(r);
                }
                Request::ChangeMembers {
                    op,
                    proposed,
                    applied,
                } => {
                    let r = match &mut self.core {
                        Core::Single(_) => Err("this coordinator is not replicated".to_string()),
                        Core::Replicated(r) => {
                            r.state.propose_member_change(op, (vec![], vec![applied]))
                        }
                    };
                    let _ = proposed.send(r);
                }
                Request::Records { ops, reply } => match self.core {
                    Core::Single(_) => {
                        self.records.apply(&ops);
                        let _ = reply.send(Ok(()));
                    }
                    Core::Replicated(_) => {
                        self.records_out.extend(ops);
                        self.records_waiting.push(reply);
                    }
                },
                other => later.push(other),
            }
        }
        self.execute(cmds, reply_to)?;
        for req in later {
            match req {
                Request::Watch {
                    worker,
                    assignments,
                    reply,
                } => {
                    // While draining the stream ends at once (its sender is dropped here).
                    let r = if self.draining {
                        Ok(())
                    } else {
                        self.watch(worker, assignments)
                    };
                    let _ = reply.send(r);
                }
                Request::Rendezvous {
                    key,
                    address,
                    nccl_id,
                    reply,
                } => self.rendezvous(key, address, nccl_id, reply),
                // A replicated leader answers a read only once a majority has confirmed that it
                // still leads (a read index), so a deposed leader never serves a stale view.
                Request::Read(f) if matches!(self.core, Core::Replicated(_)) => {
                    self.reads.unsent.push(f);
                }
                Request::Read(f) | Request::ReadLocal(f) => self.run_read(f),
                _ => {}
            }
        }
        Ok(stop)
    }

    fn progress(
        &mut self,
        key: RankKey,
        metrics: pb::StepMetrics,
        now: Millis,
    ) -> Result<Option<Command>, ApplyError> {
        self.core
            .state()
            .check_live_generation(key.job, key.generation)?;
        if key.rank != 0 {
            return Ok(None);
        }
        let step = metrics.step;
        self.record(RecordOp::Metrics {
            job: key.job,
            metrics: metrics.encode_to_vec(),
        });
        if metrics.val_loss.is_some() {
            return Ok(None); // an evaluation record: kept, but it is not training progress
        }
        self.latest.insert(key.job, metrics);
        let due = self
            .progress_logged
            .get(&key.job)
            .is_none_or(|t| t.elapsed() >= self.config.progress_log_interval);
        if !due {
            return Ok(None);
        }
        self.progress_logged.insert(key.job, Instant::now());
        Ok(Some(Command::ReportProgress {
            job: key.job,
            generation: key.generation,
            step,
            now,
        }))
    }

    /// Logs and applies `cmds`, answers their requests, and carries out their effects; when
    /// replicated, proposes them, and that happens once they are committed (see `drive`).
    fn execute(&mut self, cmds: Vec<Command>, reply_to: Vec<ReplyTo>) -> Result<(), StoreError> {
        match &mut self.core {
            Core::Single(_) if cmds.is_empty() => Ok(()),
            Core::Single(core) => {
                let results = core.execute_all(&cmds)?;
                self.finish(&cmds, results, reply_to);
                // `convoy coordinators` shows a single coordinator's applied index too.
                self.publish_leadership();
                Ok(())
            }
            Core::Replicated(_) if cmds.is_empty() && self.records_out.is_empty() => Ok(()),
            Core::Replicated(r) => {
                let records = std::mem::take(&mut self.records_out);
                let waiting = std::mem::take(&mut self.records_waiting);
                r.state.propose(cmds, records, (reply_to, waiting))?;
                self.drive()
            }
        }
    }

    /// A record: written now on one machine, replicated with the next entry otherwise.
    fn record(&mut self, op: RecordOp) {
        match self.core {
            Core::Single(_) => self.records.apply(std::slice::from_ref(&op)),
            Core::Replicated(_) => self.records_out.push(op),
        }
    }

    /// Answers the requests of applied commands and carries out their effects.
    fn finish(
        &mut self,
        cmds: &[Command],
        results: Vec<Result<Vec<Effect>, ApplyError>>,
        reply_to: Vec<ReplyTo>,
    ) {
        // Before any answer: a worker that registered must find its credential valid at once.
        self.publish_credentials();
        let mut effects = vec![];
        for ((cmd, result), p) in cmds.iter().zip(results).zip(reply_to) {
            if result.is_ok()
                && !matches!(
                    cmd,
                    Command::Heartbeat { .. } | Command::ReportProgress { .. }
                )
            {
                self.dirty = true;
            }
            match (p, result) {
                (ReplyTo::Submit(reply), Ok(fx)) => {
                    let id = fx.iter().find_map(|e| match e {
                        Effect::JobSubmitted { job } => Some(*job),
                        _ => None,
                    });
                    if let Some(id) = id {
                        let _ = reply.send(Ok(id));
                    }
                    effects.extend(fx);
                }
                (ReplyTo::Register(reply), Ok(fx)) => {
                    let id = fx.iter().find_map(|e| match e {
                        Effect::WorkerRegistered { worker } => Some(*worker),
                        _ => None,
                    });
                    let state = self.core.state();
                    if let Some(w) = id.and_then(|id| state.workers.get(&id)) {
                        let key = &state.identities.key;
                        let credential = if key.is_empty() {
                            String::new()
                        } else {
                            secrets::worker_credential(key, w.id, &w.instance)
                        };
                        let _ = reply.send(Ok((w.id, credential)));
                    }
                    effects.extend(fx);
                }
                (ReplyTo::Unit(reply), Ok(fx)) => {
                    let _ = reply.send(Ok(()));
                    effects.extend(fx);
                }
                (
                    ReplyTo::Heartbeat {
                        worker,
                        running,
                        reply,
                    },
                    Ok(fx),
                ) => {
                    let _ = reply.send(Ok(()));
                    effects.extend(fx);
                    self.reconcile(worker, &running);
                }
                (ReplyTo::Internal, Ok(fx)) => effects.extend(fx),
                (ReplyTo::Submit(reply), Err(e)) => {
                    let _ = reply.send(Err(e));
                }
                (ReplyTo::Register(reply), Err(e)) => {
                    let _ = reply.send(Err(e));
                }
                (ReplyTo::Unit(reply), Err(e)) | (ReplyTo::Heartbeat { reply, .. }, Err(e)) => {
                    let _ = reply.send(Err(e));
                }
                (ReplyTo::Internal, Err(e)) => {
                    tracing::debug!("internal command rejected: {e}");
                }
            }
        }
        for e in effects {
            self.carry_out(e);
        }
    }

    fn carry_out(&mut self, effect: Effect) {
        match effect {
            Effect::JobSubmitted { .. } | Effect::WorkerRegistered { .. } => {}
            Effect::LaunchRanks {
                job,
                generation,
                placement,
            } => {
                let names: Vec<String> = placement.iter().map(|w| self.worker_label(*w)).collect();
                self.job_event(
                    job,
                    generation,
                    format!(
                        "attempt {generation} started: ranks on {}",
                        names.join(", ")
                    ),
                );
                for (rank, w) in placement.iter().enumerate() {
                    if let Some(start) = self.start_message(job, generation, rank) {
                        self.push(*w, start);
                    }
                }
            }
            Effect::StopRanks {
                job,
                generation,
                workers,
            } => {
                for w in workers {
                    self.push(w, stop_message(job, generation, "the attempt ended"));
                }
                self.rendezvous.forget(job, generation);
            }
            Effect::JobRequeued {
                job,
                generation,
                reason,
            } => {
                tracing::warn!("{job} attempt {generation} failed: {reason}; requeued");
                self.job_event(
                    job,
                    generation,
                    format!("attempt {generation} failed: {reason}; the job is queued again"),
                );
                self.rendezvous.forget(job, generation);
            }
            Effect::JobFinished { job, state } => {
                tracing::info!("{job} {state}");
                let generation = self
                    .core
                    .state()
                    .jobs
                    .get(&job)
                    .and_then(|j| j.attempts.last())
                    .map_or(0, |a| a.generation);
                self.job_event(job, generation, format!("job {state}"));
                self.rendezvous.forget(job, generation);
                self.progress_logged.remove(&job);
                self.records.touch();
            }
            Effect::WorkerLost { worker } => {
                tracing::warn!("{} lost (no heartbeat)", self.worker_label(worker));
                self.streams.remove(&worker);
            }
            Effect::WorkerCordoned { worker, reason } => {
                tracing::warn!("{} cordoned: {reason:?}", self.worker_label(worker));
            }
            Effect::JobDeleted { job } => {
                tracing::info!("{job} deleted");
                self.latest.remove(&job);
                self.waiting.remove(&job);
                self.progress_logged.remove(&job);
            }
        }
    }

    fn worker_label(&self, w: WorkerId) -> String {
        match self.core.state().workers.get(&w) {
            Some(x) => format!("{w} ({})", x.name),
            None => w.to_string(),
        }
    }

    fn job_event(&mut self, job: JobId, generation: u64, text: String) {
        self.record(RecordOp::Log {
            job,
            line: event_line(generation, text),
        });
    }

    fn start_message(&self, job: JobId, generation: u64, rank: usize) -> Option<pb::Assignment> {
        let state = self.core.state();
        let j = state.jobs.get(&job)?;
        let key = &state.identities.key;
        let (credential, ring_secret) = if key.is_empty() {
            (String::new(), String::new())
        } else {
            (
                secrets::rank_credential(key, job, generation, rank),
                secrets::ring_secret(key, job, generation),
            )
        };
        Some(pb::Assignment {
            kind: Some(pb::assignment::Kind::Start(pb::StartRank {
                job_id: job.to_string(),
                generation,
                rank: rank as u32,
                world_size: j.world_size as u32,
                spec_toml: j.spec_text.clone(),
                workdir: j.workdir.clone(),
                backend: convert::backend(j.backend) as i32,
                credential,
                ring_secret,
            })),
        })
    }

    fn push(&mut self, worker: WorkerId, msg: pb::Assignment) {
        if let Some(tx) = self.streams.get(&worker)
            && tx.send(msg).is_err()
        {
            // The stream is gone; the worker gets its assignments again when it watches anew.
            self.streams.remove(&worker);
        }
    }

    /// A worker (re)opened its assignment stream: it gets every rank of a live attempt placed
    /// on it that has not exited. Workers ignore starts of ranks they already run, which is
    /// what lets a daemon reattach after a coordinator restart without restarting anything.
    fn watch(
        &mut self,
        worker: WorkerId,
        tx: mpsc::UnboundedSender<pb::Assignment>,
    ) -> Result<(), ApplyError> {
        let w = self.core.state().worker(worker)?;
        if w.liveness == Liveness::Lost {
            return Err(ApplyError::WorkerLost { worker });
        }
        let mut starts = vec![];
        for job in self.core.state().jobs.values() {
            if let Some(a) = job.live_attempt() {
                for (rank, w) in a.placement.iter().enumerate() {
                    if *w == worker && !a.exits.contains_key(&rank) {
                        starts.push((job.id, a.generation, rank));
                    }
                }
            }
        }
        for (job, generation, rank) in starts {
            if let Some(m) = self.start_message(job, generation, rank) {
                let _ = tx.send(m);
            }
        }
        self.streams.insert(worker, tx);
        Ok(())
    }

    /// Stops ranks a worker runs that belong to no live attempt on it (the job was cancelled
    /// or restarted while the worker or the coordinator was away).
    fn reconcile(&mut self, worker: WorkerId, running: &[RankKey]) {
        let mut stale: BTreeMap<(JobId, u64), ()> = BTreeMap::new();
        for k in running {
            let live = self
                .core
                .state()
                .jobs
                .get(&k.job)
                .and_then(|j| j.live_attempt())
                .is_some_and(|a| {
                    a.generation == k.generation && a.placement.get(k.rank) == Some(&worker)
                });
            if !live {
                stale.insert((k.job, k.generation), ());
            }
        }
        for (job, generation) in stale.into_keys() {
            self.push(
                worker,
                stop_message(job, generation, "this attempt is no longer running"),
            );
        }
    }

    fn rendezvous(
        &mut self,
        key: RankKey,
        address: String,
        nccl_id: Vec<u8>,
        reply: Reply<Result<Published, ApplyError>>,
    ) {
        let world = match self
            .core
            .state()
            .check_live_generation(key.job, key.generation)
        {
            Ok(a) => a.placement.len(),
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        if key.rank >= world {
            let _ = reply.send(Err(ApplyError::RankOutOfRange {
                job: key.job,
                generation: key.generation,
                rank: key.rank,
                world_size: world,
            }));
            return;
        }
        self.rendezvous.publish(key, world, address, nccl_id, reply);
    }

    /// Removes the logs and metrics of jobs that ended longer ago than the retention. A
    /// failure here is the records store's, which stops the coordinator (see `FailStop`).
    fn sweep_records(&mut self) {
        let Some(keep) = self.config.records_retention else {
            return;
        };
        let cutoff = self.now().saturating_sub(keep.as_millis() as u64);
        let expired: Vec<JobId> = self
            .core
            .state()
            .jobs
            .values()
            .filter(|j| j.state.is_final())
            .filter(|j| {
                let ended = j
                    .attempts
                    .last()
                    .and_then(|a| a.ended_at)
                    .unwrap_or(j.submitted_at);
                ended < cutoff
            })
            .map(|j| j.id)
            .collect();
        let mut removed = 0;
        for job in expired {
            removed += self.records.remove_job(job).unwrap_or(0);
            self.latest.remove(&job);
        }
        if removed > 0 {
            tracing::info!("removed {removed} log and metric records of jobs past their retention");
        }
    }

    fn tick(&mut self) -> Result<(), StoreError> {
        let now = self.now();
        if self.core.state().tick_due(now) {
            self.execute(vec![Command::Tick { now }], vec![ReplyTo::Internal])?;
        }
        Ok(())
    }

    fn schedule(&mut self) -> Result<(), StoreError> {
        self.dirty = false;
        let now = self.now();
        let plan = schedule_at(self.core.state(), now);
        // A held job becomes startable with time alone: look again at the next tick.
        let held = plan
            .waiting
            .iter()
            .any(|n| matches!(n.reason, WaitReason::Held { .. }));
        self.waiting = plan
            .waiting
            .into_iter()
            .chain(plan.unschedulable)
            .map(|n| (n.job, n.reason))
            .collect();
        let cmds: Vec<Command> = plan
            .starts
            .into_iter()
            .map(|d| d.into_command(now))
            .collect();
        let reply_to = cmds.iter().map(|_| ReplyTo::Internal).collect();
        self.execute(cmds, reply_to)?;
        // Starting jobs changed nothing else the scheduler reads until the next event.
        self.dirty = held;
        Ok(())
    }
}

fn stop_message(job: JobId, generation: u64, reason: &str) -> pb::Assignment {
    pb::Assignment {
        kind: Some(pb::assignment::Kind::Stop(pb::StopRanks {
            job_id: job.to_string(),
            generation,
            reason: reason.into(),
        })),
    }
}
