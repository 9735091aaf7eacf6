//! [`ReplicatedState`]: the state machine bound to a Raft-replicated log — propose, then apply
//! once committed. It is what [`crate::logged_state::LoggedState`] is on one machine, with its
//! "append, apply at once" split in two: a leader proposes a batch of commands (one Raft
//! entry, one group commit), and every replica applies each committed batch to its own
//! `ClusterState` with the same pure `apply`. The proposer recognises its own batches by
//! (origin, seq) and hands back the token it was given with the results, so the caller can
//! answer the requests that asked for them.
//!
//! A leader serves only once it has applied every entry of earlier terms (its term's first
//! entry, raft-rs's empty one, is applied): before that its state could be older than what
//! the previous leader acknowledged. Losing leadership abandons the tokens of proposals not
//! yet applied here; whether they commit is unknown, which is why submissions carry request
//! ids and clients retry.

use std::collections::HashMap;

use raft::eraftpb::Message;

use super::{RaftStorage, Replica};
use crate::error::{ApplyError, StoreError};
use crate::log::codec::{self, Proposal, RecordOp};
use crate::model::Millis;
use crate::state::{ClusterConfig, ClusterState, Command, Effect};

/// One applied batch.
pub struct Applied<T> {
    /// The Raft entry it was.
    pub index: u64,
    pub commands: Vec<Command>,
    pub results: Vec<Result<Vec<Effect>, ApplyError>>,
    /// Records to write (see `codec::RecordOp`).
    pub records: Vec<RecordOp>,
    /// The proposer's token, on the replica that proposed the batch (if it still waits).
    pub token: Option<T>,
}

/// What one [`ReplicatedState::advance`] did.
pub struct Advance<T> {
    /// For the peers named in each message's `to`.
    pub messages: Vec<Message>,
    /// The state was replaced by a snapshot from the leader (before `applied`).
    pub restored: bool,
    pub applied: Vec<Applied<T>>,
    /// Proposals this replica will not see through (it lost leadership): their outcome is
    /// unknown to it.
    pub abandoned: Vec<T>,
    /// This replica has just begun serving as the leader.
    pub began_serving: bool,
    /// Reads confirmed by a majority: (the number given to `read_index`, the index the state
    /// must have applied before they run).
    pub reads: Vec<(u64, u64)>,
}

pub struct ReplicatedState<T> {
    state: ClusterState,
    replica: Replica,
    node_id: u64,
    applied: u64,
    snapshot_index: u64,
    /// A snapshot is made after this many applied entries since the last one (0: never).
    snapshot_every: u64,
    /// Proposals are numbered (term << 32) + a count within the term: a restarted replica
    /// leads in a later term than any proposal it made before, so an old one still in the
    /// log is never mistaken for a new one.
    next_seq: u64,
    pending: HashMap<u64, T>,
    /// As leader: the term, and the index of its first entry (serving once applied).
    leading: Option<(u64, u64)>,
    serving: bool,
    /// The latest time stamped into an applied command.
    latest_time: Millis,
}

fn raft_error(what: &str) -> impl FnOnce(raft::Error) -> StoreError + '_ {
    move |e| StoreError::Raft(format!("{what}: {e}"))
}

impl<T> ReplicatedState<T> {
    /// Member `node_id` of the group of `voters`, on `storage`: the state is rebuilt from the
    /// stored snapshot (a new cluster starts from `config`), and the committed entries after
    /// it come back from the first [`ReplicatedState::advance`].
    pub fn open(
        node_id: u64,
        voters: &[u64],
        storage: RaftStorage,
        config: ClusterConfig,
        snapshot_every: u64,
    ) -> Result<Self, StoreError> {
        let (state, applied) = match storage
            .stored_snapshot()
            .map_err(raft_error("reading the snapshot"))?
        {
            Some((index, data)) => {
                let (_, state) = codec::decode_snapshot(&data).map_err(|msg| {
                    StoreError::CorruptSnapshot(format!("the snapshot at {index} {msg}"))
                })?;
                (state, index)
            }
            None => (ClusterState::new(config), 0),
        };
        let replica =
            Replica::new(node_id, voters, storage).map_err(raft_error("starting the replica"))?;
        Ok(ReplicatedState {
            state,
            replica,
            node_id,
            applied,
            snapshot_index: applied,
            snapshot_every,
            next_seq: 0,
            pending: HashMap::new(),
            leading: None,
            serving: false,
            latest_time: 0,
        })
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The index of the last entry applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The time to stamp into a command proposed now, given the wall clock: never before a
    /// command already applied, so time does not go backwards in the log when a new leader's
    /// clock is behind its predecessor's.
    pub fn clock(&self, wall: Millis) -> Millis {
        wall.max(self.latest_time).max(self.state.clock)
    }

    /// Whether this replica is the leader and has applied everything before its term.
    pub fn serving(&self) -> bool {
        self.serving
    }

    /// Proposals made here and not yet applied.
    pub fn proposals_in_flight(&self) -> usize {
        self.pending.len()
    }

    pub fn tick(&mut self) {
        self.replica.tick();
    }

    /// A message from a peer. One that does not fit this replica's state (from an old term,
    /// for another node) is dropped, as Raft expects of a lossy network.
    pub fn step(&mut self, msg: Message) {
        if let Err(e) = self.replica.step(msg) {
            tracing::debug!("a peer message was dropped: {e}");
        }
    }

    /// Asks raft-rs to hand leadership to `to`; false unless this replica leads and `to` is
    /// another member.
    pub fn transfer_leader(&mut self, to: u64, members: &[u64]) -> bool {
        if !self.replica.is_leader() || to == self.node_id || !members.contains(&to) {
            return false;
        }
        self.replica.transfer_leader(to);
        true
    }

    /// Asks the majority to confirm that this replica still leads, for the reads numbered
    /// `ctx`; false when it does not serve (the reads must be refused).
    pub fn read_index(&mut self, ctx: u64) -> bool {
        if !self.serving {
            return false;
        }
        self.replica.read_index(ctx.to_be_bytes().to_vec());
        true
    }

    /// Peer `id` lost its log (see `Replica::peer_lost_log`).
    pub fn peer_lost_log(&mut self, id: u64) {
        tracing::warn!("replica {id} restarted without its log; sending it the log again");
        self.replica.peer_lost_log(id);
    }

    /// Proposes `commands` as one entry; `token` comes back with their results once they are
    /// applied here. Not serving (or raft-rs refusing), the token is dropped at once: whoever
    /// waits on it learns that this replica does not lead.
    pub fn propose(
        &mut self,
        commands: Vec<Command>,
        records: Vec<RecordOp>,
        token: T,
    ) -> Result<(), StoreError> {
        if !self.serving || (commands.is_empty() && records.is_empty()) {
            return Ok(());
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let data = codec::encode_proposal(&Proposal {
            origin: self.node_id,
            seq,
            commands,
            records,
        })?;
        match self.replica.propose(data) {
            Ok(()) => {
                self.pending.insert(seq, token);
            }
            Err(raft::Error::ProposalDropped) => {}
            Err(e) => return Err(raft_error("proposing")(e)),
        }
        Ok(())
    }

    /// Handles whatever raft-rs has ready: persists, applies what committed, and says what
    /// the caller must send and answer.
    pub fn advance(&mut self) -> Result<Advance<T>, StoreError> {
        let out = self
            .replica
            .ready()
            .map_err(raft_error("handling a ready"))?;
        let mut adv = Advance {
            messages: out.messages,
            restored: false,
            applied: vec![],
            abandoned: vec![],
            began_serving: false,
            reads: out
                .reads
                .iter()
                .filter_map(|(ctx, index)| {
                    let ctx: [u8; 8] = ctx.as_slice().try_into().ok()?;
                    Some((u64::from_be_bytes(ctx), *index))
                })
                .collect(),
        };
        if let Some((index, data)) = out.snapshot {
            let (_, state) = codec::decode_snapshot(&data).map_err(|msg| {
                StoreError::CorruptSnapshot(format!("the leader's snapshot at {index} {msg}"))
            })?;
            self.state = state;
            self.applied = index;
            self.snapshot_index = index;
            adv.restored = true;
        }
        for (index, data) in out.committed {
            let p = codec::decode_proposal(&data)
                .map_err(|msg| StoreError::CorruptEntry { index, msg })?;
            let results = p.commands.iter().map(|c| self.state.apply(c)).collect();
            if let Some(t) = p.commands.iter().filter_map(Command::now).max() {
                self.latest_time = self.latest_time.max(t);
            }
            let token = if p.origin == self.node_id {
                self.pending.remove(&p.seq)
            } else {
                None
            };
            adv.applied.push(Applied {
                index,
                commands: p.commands,
                results,
                records: p.records,
                token,
            });
        }
        if let Some(i) = out.applied_to {
            self.applied = self.applied.max(i);
        }
        self.update_role(&mut adv);
        self.maybe_snapshot()?;
        Ok(adv)
    }

    fn update_role(&mut self, adv: &mut Advance<T>) {
        let term = self.replica.term();
        if self.replica.is_leader() {
            if self.leading.is_none_or(|(t, _)| t != term) {
                self.abandon(adv);
                self.leading = Some((term, self.replica.last_index()));
                self.next_seq = term << 32;
            }
            if let Some((_, first)) = self.leading
                && !self.serving
                && self.applied >= first
            {
                self.serving = true;
                adv.began_serving = true;
            }
        } else if self.leading.is_some() {
            self.leading = None;
            self.abandon(adv);
        }
    }

    fn abandon(&mut self, adv: &mut Advance<T>) {
        self.serving = false;
        adv.abandoned.extend(self.pending.drain().map(|(_, t)| t));
    }

    fn maybe_snapshot(&mut self) -> Result<(), StoreError> {
        if self.snapshot_every > 0 && self.applied - self.snapshot_index >= self.snapshot_every {
            self.snapshot()?;
        }
        Ok(())
    }

    /// Stores a snapshot of the state now (and compacts the log behind it).
    pub fn snapshot(&mut self) -> Result<(), StoreError> {
        if self.applied == self.snapshot_index {
            return Ok(());
        }
        let data = codec::encode_snapshot(self.applied, &self.state)?;
        self.replica
            .snapshot(self.applied, data)
            .map_err(raft_error("storing a snapshot"))?;
        self.snapshot_index = self.applied;
        Ok(())
    }
}
