//! [`Replica`]: one member of the Raft group, driven the way raft-rs's `five_mem_node` example
//! drives a `RawNode`: tick, step peers' messages, propose, then handle each `Ready` in the
//! order raft-rs requires (send messages, install a snapshot, apply committed entries, persist
//! entries and hard state, send the messages that had to wait for persistence, advance).
//!
//! It does no I/O of its own besides its storage: messages to peers and committed entries come
//! back in an [`Output`] for the caller (the coordinator's loop, or a simulation) to carry out.

use std::collections::HashMap;

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfState, Entry, EntryType, Message, MessageType};
use raft::{Config, ProgressState, RawNode, Result, SnapshotStatus, StateRole, Storage};

use super::{AddressBook, RaftStorage};

/// Ticks and elections, as measured for a 20 ms tick: a heartbeat every 100 ms, an election
/// after 0.5–1 s of silence (raft-rs randomises it in [election, 2 × election)).
pub const HEARTBEAT_TICKS: usize = 5;
pub const ELECTION_TICKS: usize = 25;

/// What a [`Replica::ready`] produced.
#[derive(Debug, Default)]
pub struct Output {
    /// To be delivered to the peers named in each message's `to`.
    pub messages: Vec<Message>,
    /// Committed entries with data, in log order: (index, data).
    pub committed: Vec<(u64, Vec<u8>)>,
    /// Committed membership changes, in log order, for the caller to apply with
    /// [`Replica::apply_conf_change`] before the next `ready`.
    pub conf_changes: Vec<(u64, ConfChange)>,
    /// The index of the last committed entry handed out, data or not (a new leader's empty
    /// entry counts: it is how a leader learns it has applied everything before its term).
    pub applied_to: Option<u64>,
    /// A snapshot received from the leader and installed: (its index, its data, its
    /// membership). The caller replaces its state with it before applying `committed`.
    pub snapshot: Option<(u64, Vec<u8>, ConfState)>,
    /// Confirmed reads: (the context given to [`Replica::read_index`], the commit index a
    /// read must wait to be applied before it may run).
    pub reads: Vec<(Vec<u8>, u64)>,
}

/// A snapshot sent to a peer that has not answered within this many ticks (2 s) is taken
/// for lost and sent again.
const SNAPSHOT_RETRY_TICKS: usize = 100;

pub struct Replica {
    node: RawNode<RaftStorage>,
    /// As leader: the ticks each peer has waited for the snapshot it was sent.
    snapshot_waits: HashMap<u64, usize>,
}

impl Replica {
    /// Member `id` of the group of `voters`, on `storage`. A storage that holds no membership
    /// yet (a new cluster) starts with `voters`; every member of a new cluster must be started
    /// with the same list. With no `voters` (a member joining a running cluster) it starts
    /// with none and waits for the leader's snapshot to tell it who is in the group.
    pub fn new(id: u64, voters: &[u64], storage: RaftStorage) -> Result<Replica> {
        let state = storage.initial_state()?;
        if state.conf_state.voters.is_empty() && !voters.is_empty() {
            storage.set_conf_state(&ConfState {
                voters: voters.to_vec(),
                ..Default::default()
            })?;
        }
        let config = Config {
            id,
            heartbeat_tick: HEARTBEAT_TICKS,
            election_tick: ELECTION_TICKS,
            pre_vote: true,
            check_quorum: true,
            // Entries already applied are in the state the caller rebuilt from its snapshot;
            // everything after the snapshot is handed out again.
            applied: storage.first_index()?.saturating_sub(1),
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        config.validate()?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        Ok(Replica {
            node: RawNode::new(&config, storage, &logger)?,
            snapshot_waits: HashMap::new(),
        })
    }

    pub fn tick(&mut self) {
        self.node.tick();
        self.retry_lost_snapshots();
    }

    /// raft-rs sends a peer that is too far behind a snapshot, then waits to hear how it
    /// went before sending that peer anything else. The transport drops messages to peers
    /// that are unreachable or slow, so a lost snapshot would leave the peer behind for as
    /// long as this replica leads: after [`SNAPSHOT_RETRY_TICKS`] it is reported lost, and
    /// raft-rs probes the peer and sends it again.
    fn retry_lost_snapshots(&mut self) {
        if !self.is_leader() {
            self.snapshot_waits.clear();
            return;
        }
        let waiting: Vec<u64> = self
            .node
            .raft
            .prs()
            .iter()
            .filter(|(_, pr)| pr.state == ProgressState::Snapshot)
            .map(|(id, _)| *id)
            .collect();
        self.snapshot_waits.retain(|id, _| waiting.contains(id));
        for id in waiting {
            let ticks = self.snapshot_waits.entry(id).or_default();
            *ticks += 1;
            if *ticks >= SNAPSHOT_RETRY_TICKS {
                self.snapshot_waits.remove(&id);
                self.node.report_snapshot(id, SnapshotStatus::Failure);
            }
        }
    }

    /// Proposes `data` (only a leader accepts; `ProposalDropped` otherwise).
    pub fn propose(&mut self, data: Vec<u8>) -> Result<()> {
        self.node.propose(vec![], data)
    }

    /// A message from a peer. A heartbeat claiming a commit index beyond this replica's log
    /// means the log was lost (a wiped disk): raft-rs would panic on it, so the claim is
    /// clamped to what is here, and the leader, told by the transport (see
    /// [`Replica::peer_lost_log`]), sends the log again.
    pub fn step(&mut self, mut msg: Message) -> Result<()> {
        if msg.get_msg_type() == MessageType::MsgHeartbeat && msg.commit > self.last_index() {
            msg.commit = self.last_index();
        }
        self.node.step(msg)
    }

    /// Peer `id` restarted with an empty log: as leader, forget what it was believed to hold
    /// and probe it from the start (entries, or the snapshot if they were compacted away).
    pub fn peer_lost_log(&mut self, id: u64) {
        if let Some(pr) = self.node.raft.mut_prs().get_mut(id) {
            pr.matched = 0;
            pr.become_probe();
        }
    }

    /// Proposes a membership change (only a leader accepts, and only with no other change
    /// pending: see [`Replica::change_pending`]).
    pub fn propose_conf_change(&mut self, context: Vec<u8>, cc: ConfChange) -> Result<()> {
        self.node.propose_conf_change(context, cc)
    }

    /// Whether a membership change is proposed and not yet applied (raft-rs takes one at a
    /// time, and would turn a second into an empty entry).
    pub fn change_pending(&self) -> bool {
        self.node.raft.has_pending_conf()
    }

    /// Applies a committed membership change, storing the new conf state with `book` (the
    /// addresses after the change).
    pub fn apply_conf_change(&mut self, cc: &ConfChange, book: &AddressBook) -> Result<ConfState> {
        let cs = self.node.apply_conf_change(cc)?;
        self.node.mut_store().set_membership(&cs, book)?;
        Ok(cs)
    }

    /// Stores `book` with the conf state in force (after a snapshot brought both).
    pub fn store_membership(&mut self, cs: &ConfState, book: &AddressBook) -> Result<()> {
        self.node.mut_store().set_membership(cs, book)
    }

    /// As leader: the index up to which member `id`'s log is known to match this one's.
    pub fn matched(&self, id: u64) -> Option<u64> {
        self.node.raft.prs().get(id).map(|pr| pr.matched)
    }

    /// The voters and learners raft-rs holds now.
    pub fn conf_state(&self) -> ConfState {
        self.node.raft.prs().conf().to_conf_state()
    }

    pub fn storage(&self) -> &RaftStorage {
        self.node.store()
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// "leader", "follower", "candidate" (a pre-candidate counts as one) or "learner".
    pub fn role(&self) -> &'static str {
        let id = self.node.raft.id;
        match self.node.raft.state {
            StateRole::Leader => "leader",
            StateRole::Follower if self.node.raft.prs().conf().learners().contains(&id) => {
                "learner"
            }
            StateRole::Follower => "follower",
            StateRole::Candidate | StateRole::PreCandidate => "candidate",
        }
    }

    /// The leader this replica knows of (0: none).
    pub fn leader(&self) -> u64 {
        self.node.raft.leader_id
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    /// The index of the last entry in this replica's log.
    pub fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }

    /// The commit index this replica knows.
    pub fn commit_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    /// Stores `data` (the caller's state, applied up to `index`) as the snapshot and drops
    /// the entries it covers; a peer too far behind is sent it instead of the entries.
    pub fn snapshot(&mut self, index: u64, data: Vec<u8>) -> Result<()> {
        let conf = self.node.raft.prs().conf().to_conf_state();
        self.node.mut_store().create_snapshot(index, &conf, data)
    }

    /// Asks for a read index (raft-rs's safe read: the leader confirms with a heartbeat round
    /// to a majority that it still leads); it comes back in [`Output::reads`] with `ctx`.
    pub fn read_index(&mut self, ctx: Vec<u8>) {
        self.node.read_index(ctx);
    }

    /// As leader: hands leadership to `to` once it has caught up (raft-rs's transfer).
    pub fn transfer_leader(&mut self, to: u64) {
        self.node.transfer_leader(to);
    }

    /// Handles whatever raft-rs has ready; what the caller must send and apply.
    pub fn ready(&mut self) -> Result<Output> {
        let mut out = Output::default();
        if !self.node.has_ready() {
            return Ok(out);
        }
        let mut ready = self.node.ready();
        out.messages.extend(ready.take_messages());
        out.reads.extend(
            ready
                .take_read_states()
                .into_iter()
                .map(|r| (r.request_ctx, r.index)),
        );
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot();
            self.node.mut_store().apply_snapshot(snapshot)?;
            let meta = snapshot.get_metadata();
            let index = meta.index;
            out.snapshot = Some((index, snapshot.data.to_vec(), meta.get_conf_state().clone()));
            out.applied_to = Some(index);
        }
        take_committed(&mut out, ready.take_committed_entries())?;
        self.node.mut_store().append(ready.entries())?;
        if let Some(hs) = ready.hs() {
            self.node.mut_store().set_hard_state(hs)?;
        }
        out.messages.extend(ready.take_persisted_messages());
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit)?;
        }
        out.messages.extend(light.take_messages());
        take_committed(&mut out, light.take_committed_entries())?;
        self.node.advance_apply();
        Ok(out)
    }
}

/// Normal entries with data (an empty one is a new leader's no-op) and membership changes.
fn take_committed(out: &mut Output, entries: Vec<Entry>) -> Result<()> {
    for e in entries {
        out.applied_to = Some(e.index);
        match e.get_entry_type() {
            EntryType::EntryNormal if !e.data.is_empty() => {
                out.committed.push((e.index, e.data.to_vec()));
            }
            EntryType::EntryConfChange => {
                // raft-rs keeps the proposer's context on the entry; it travels on with the
                // change here.
                let mut cc = ConfChange::parse_from_bytes(&e.data)?;
                cc.context = e.context.clone();
                out.conf_changes.push((e.index, cc));
            }
            _ => {}
        }
    }
    Ok(())
}
