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

use raft::eraftpb::{ConfChange, ConfChangeType, Message};

use super::{AddressBook, MemberChange, RaftStorage, Replica};
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
    /// The members changed (a membership change or a snapshot applied): the book now.
    pub members: Option<AddressBook>,
    /// This replica applied its own removal: it must stop.
    pub removed: bool,
    /// A snapshot must be taken before anything more is sent (see `apply_member_change`).
    compact: bool,
}

/// A change of membership, as an operator (or the leader, for a promotion) asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberOp {
    /// A new member, at `address` (`http://host:port`): it joins as a learner.
    Add {
        node: u64,
        address: String,
    },
    /// A learner that caught up becomes a voter.
    Promote {
        node: u64,
    },
    Remove {
        node: u64,
    },
}

/// A learner is promoted once it is this close to the leader's commit index.
const PROMOTE_WITHIN: u64 = 64;

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
    /// The members' addresses, changed with the log's membership changes.
    book: AddressBook,
    /// Started to join a running cluster.
    joining: bool,
}

fn raft_error(what: &str) -> impl FnOnce(raft::Error) -> StoreError + '_ {
    move |e| StoreError::Raft(format!("{what}: {e}"))
}

impl<T> ReplicatedState<T> {
    /// Member `node_id` on `storage`, `given` the members it was started with: the state is
    /// rebuilt from the stored snapshot (a new cluster starts from `config`), and the
    /// committed entries after it come back from the first [`ReplicatedState::advance`].
    ///
    /// A new storage starts a new cluster of `given`'s voters, unless `join`: then it waits
    /// for the leader of a running cluster, which has added it, to send its state. Until a
    /// membership change has been applied, `given` is the member list; after one, the list
    /// in the log is, and a different `given` is only reported.
    pub fn open(
        node_id: u64,
        given: &AddressBook,
        join: bool,
        storage: RaftStorage,
        config: ClusterConfig,
        snapshot_every: u64,
    ) -> Result<Self, StoreError> {
        if storage
            .removed()
            .map_err(raft_error("reading the removal mark"))?
        {
            return Err(StoreError::Removed { node: node_id });
        }
        let (state, applied, snapshot_book) = match storage
            .stored_snapshot()
            .map_err(raft_error("reading the snapshot"))?
        {
            Some((index, data)) => {
                let (_, state, book) = codec::decode_replica_snapshot(&data).map_err(|msg| {
                    StoreError::CorruptSnapshot(format!("the snapshot at {index} {msg}"))
                })?;
                (state, index, book)
            }
            None => (ClusterState::new(config), 0, None),
        };
        let stored_book = storage
            .address_book()
            .map_err(raft_error("reading the address book"))?;
        // The newest of the stored book and the snapshot's (a crash may fall between
        // installing a snapshot and storing its book).
        let logged = [stored_book, snapshot_book]
            .into_iter()
            .flatten()
            .filter(|b| b.changed_at > 0)
            .max_by_key(|b| b.changed_at);
        let book = match logged {
            Some(book) => {
                if book.canonical() != given.canonical() {
                    tracing::warn!(
                        "--peers ({}) differs from the members in the log ({}); the log's are \
                         used",
                        given.canonical(),
                        book.canonical()
                    );
                }
                book
            }
            None => given.clone(),
        };
        let voters = if join { vec![] } else { book.voters() };
        let mut replica =
            Replica::new(node_id, &voters, storage).map_err(raft_error("starting the replica"))?;
        let conf = replica.conf_state();
        if !conf.voters.is_empty() {
            replica
                .store_membership(&conf, &book)
                .map_err(raft_error("storing the members"))?;
        }
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
            book,
            joining: join,
        })
    }

    /// The members' addresses as applied here.
    pub fn members(&self) -> &AddressBook {
        &self.book
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

    /// Peer `peer` refused this replica as not a member, judging by the members it applied
    /// at index `at`. Members change one at a time along the log, starting from a list this
    /// replica was in: if `at` is past the last change applied here, a later change removed
    /// this replica (the leader stops sending to a member once it applies its removal, so a
    /// removed member may never apply it itself). A member that joined and has applied no
    /// change yet cannot tell a removal from an addition its peer has not applied: it waits.
    pub fn refused_by(&mut self, peer: u64, at: u64) -> Result<(), StoreError> {
        let here = self.book.changed_at;
        if at <= here || (self.joining && here == 0) {
            return Ok(());
        }
        tracing::error!(
            "coordinator {peer} no longer counts this replica as a member (membership at index \
             {at}; this replica has applied the one at {here})"
        );
        self.replica
            .storage()
            .mark_removed()
            .map_err(raft_error("marking the removal"))?;
        Err(StoreError::Removed { node: self.node_id })
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

    /// Proposes a membership change; `token` comes back once it is applied here. One change
    /// at a time, by the serving leader, and only one that leaves a cluster: the error says
    /// why not, in a line for the operator.
    pub fn propose_member_change(&mut self, op: MemberOp, token: T) -> Result<(), String> {
        let me = self.node_id;
        if !self.serving {
            return Err(format!("coordinator {me} is not the serving leader"));
        }
        if self.replica.change_pending() {
            return Err("another membership change is under way; retry once it is applied".into());
        }
        let book = &self.book;
        let mut cc = ConfChange::default();
        let mut address = String::new();
        match op {
            MemberOp::Add { node, address: a } => {
                if node == 0 {
                    return Err("node ids start at 1".into());
                }
                if book.contains(node) {
                    return Err(format!("coordinator {node} is already a member"));
                }
                if let Some((other, _)) = book.addresses.iter().find(|(_, u)| **u == a) {
                    return Err(format!("{a} is already coordinator {other}'s address"));
                }
                cc.set_change_type(ConfChangeType::AddLearnerNode);
                cc.node_id = node;
                address = a;
            }
            MemberOp::Promote { node } => {
                if !book.learners.contains(&node) {
                    return Err(format!("coordinator {node} is not a learner"));
                }
                cc.set_change_type(ConfChangeType::AddNode);
                cc.node_id = node;
            }
            MemberOp::Remove { node } => {
                if !book.contains(node) {
                    return Err(format!("coordinator {node} is not a member"));
                }
                if node == me {
                    return Err(format!(
                        "coordinator {me} leads; hand leadership to another member first \
                         (convoy coordinators --transfer-to N)"
                    ));
                }
                cc.set_change_type(ConfChangeType::RemoveNode);
                cc.node_id = node;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let context = codec::encode_member_change(&MemberChange {
            origin: me,
            seq,
            address,
        })
        .map_err(|e| e.to_string())?;
        self.replica
            .propose_conf_change(context, cc)
            .map_err(|e| format!("raft refused the change: {e}"))?;
        self.pending.insert(seq, token);
        Ok(())
    }

    /// As the serving leader with no change pending: a learner that has caught up, to be
    /// promoted to a voter.
    pub fn learner_to_promote(&self) -> Option<u64> {
        if !self.serving || self.replica.change_pending() {
            return None;
        }
        let commit = self.replica.commit_index();
        // `matched` is 0 until the learner first answers: a young log's commit index could
        // otherwise be "close" to a learner that holds nothing.
        self.book.learners.iter().copied().find(|id| {
            self.replica
                .matched(*id)
                .is_some_and(|m| m > 0 && m + PROMOTE_WITHIN >= commit)
        })
    }

    /// Applies a committed membership change: Raft's voters and learners, and the address
    /// book with them. A change already in the stored book (replayed after a restart) only
    /// answers its proposer.
    fn apply_member_change(
        &mut self,
        index: u64,
        cc: ConfChange,
        adv: &mut Advance<T>,
    ) -> Result<(), StoreError> {
        let change =
            codec::decode_member_change(&cc.context).map_err(|msg| StoreError::CorruptEntry {
                index,
                msg: format!("its membership change {msg}"),
            })?;
        if index > self.book.changed_at {
            if self.replica.conf_state().voters.is_empty() {
                // A member that joined must learn the voters from a snapshot first; applying
                // a change to an empty membership would make it a cluster of its own.
                return Err(StoreError::Raft(format!(
                    "membership change at {index} reached a replica that knows no members \
                     (it joined without receiving a snapshot)"
                )));
            }
            let mut book = self.book.clone();
            let node = cc.node_id;
            match cc.get_change_type() {
                ConfChangeType::AddLearnerNode => {
                    book.addresses.insert(node, change.address.clone());
                    book.learners.insert(node);
                    // The log is compacted past the addition, on every replica: whichever
                    // leads sends the new member a snapshot (voters, learners, addresses), not
                    // entries from the founding, which carry no membership.
                    adv.compact = true;
                }
                ConfChangeType::AddNode => {
                    if !change.address.is_empty() {
                        book.addresses.insert(node, change.address.clone());
                    }
                    book.learners.remove(&node);
                }
                ConfChangeType::RemoveNode => {
                    book.addresses.remove(&node);
                    book.learners.remove(&node);
                }
            }
            book.changed_at = index;
            match self.replica.apply_conf_change(&cc, &book) {
                Ok(_) => {
                    tracing::info!("members at index {index}: {}", book.canonical());
                    self.book = book;
                    adv.members = Some(self.book.clone());
                    if cc.get_change_type() == ConfChangeType::RemoveNode
                        && cc.node_id == self.node_id
                    {
                        self.replica
                            .storage()
                            .mark_removed()
                            .map_err(raft_error("marking the removal"))?;
                        adv.removed = true;
                    }
                }
                // Every replica refuses the same change the same way.
                Err(e) => tracing::warn!("membership change at {index} not applied: {e}"),
            }
        }
        let token = if change.origin == self.node_id {
            self.pending.remove(&change.seq)
        } else {
            None
        };
        if token.is_some() {
            adv.applied.push(Applied {
                index,
                commands: vec![],
                results: vec![],
                records: vec![],
                token,
            });
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
            members: None,
            removed: false,
            compact: false,
        };
        if let Some((index, data, conf)) = out.snapshot {
            let (_, state, book) = codec::decode_replica_snapshot(&data).map_err(|msg| {
                StoreError::CorruptSnapshot(format!("the leader's snapshot at {index} {msg}"))
            })?;
            self.state = state;
            self.applied = index;
            self.snapshot_index = index;
            adv.restored = true;
            if let Some(book) = book.filter(|b| b.changed_at >= self.book.changed_at) {
                self.replica
                    .store_membership(&conf, &book)
                    .map_err(raft_error("storing the snapshot's members"))?;
                self.book = book;
                adv.members = Some(self.book.clone());
            }
        }
        for (index, cc) in out.conf_changes {
            self.apply_member_change(index, cc, &mut adv)?;
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
        if adv.compact {
            self.snapshot()?;
        }
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
        let data = codec::encode_replica_snapshot(self.applied, &self.state, &self.book)?;
        self.replica
            .snapshot(self.applied, data)
            .map_err(raft_error("storing a snapshot"))?;
        self.snapshot_index = self.applied;
        Ok(())
    }
}
