//! A simulation of replicas (seeded network and commands; in one process; real sled storage)
//! driving the coordinator's own `ReplicatedState`, the path a replicated coordinator runs:
//! messages are dropped, duplicated and reordered, replicas crash and restart from their
//! storage, snapshots are taken every few entries (so lagging replicas are sent one), each
//! replica's clock is skewed, leaders come and go (a thousand times in one run), members
//! join, are promoted and are removed, and a follower loses its disk and is rebuilt from the
//! others. The proposals are real commands. (raft-rs draws its election timeouts from its own
//! generator, so a seed fixes the faults, not every interleaving.)
//!
//! Checked after every round: applied logs are prefixes of one another; replicas that applied
//! the same index hold equal states; at most one leader per term; time never goes backwards
//! in the commands a replica accepted, whichever skewed clock stamped them. Once the network
//! heals: every replica holds the same log and the same state, and every proposal whose
//! proposer answered it is in that log, at the index it was answered for, exactly once; and
//! the answered history is linearizable with the log as its order (replayed sequentially it
//! gives every answer, job ids included, and respects real-time order).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::random::Gen;
use convoy_coordinator::replication::{AddressBook, MemberOp, RaftStorage, ReplicatedState};
use convoy_coordinator::{ApplyError, ClusterConfig, ClusterState, Command, Effect};
use raft::eraftpb::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const NODES: [u64; 3] = [1, 2, 3];
/// Small, so that snapshots, compaction and snapshot transfers happen many times a run.
const SNAPSHOT_EVERY: u64 = 40;

struct Node {
    db: sled::Db,
    core: ReplicatedState<u64>,
    /// What this replica applied, by index (rebuilt from what it applies after a crash; a
    /// snapshot covers the indexes before it).
    applied: BTreeMap<u64, Vec<Command>>,
    /// This replica's clock runs this far ahead of (or behind) the simulation's.
    skew: i64,
    /// The latest time among the commands it applied and accepted.
    latest: u64,
    /// Reads confirmed here: (number, read index).
    reads: Vec<(u64, u64)>,
    /// Started to join a running cluster (and restarted the same way).
    join: bool,
}

/// The members a replica is started with, at addresses the simulation never dials: the
/// founding three, and itself when it joins later.
fn given(id: u64) -> AddressBook {
    let mut members: BTreeMap<u64, String> = NODES
        .iter()
        .map(|id| (*id, format!("sim-{id}:1")))
        .collect();
    members.insert(id, format!("sim-{id}:1"));
    AddressBook::founding(&members)
}

impl Node {
    /// Replica `id` on `db`; `join`: a member added to a running cluster.
    fn start(id: u64, db: sled::Db, skew: i64, join: bool) -> Node {
        let storage = RaftStorage::open(&db).expect("storage");
        let core = ReplicatedState::open(
            id,
            &given(id),
            join,
            storage,
            ClusterConfig::default(),
            SNAPSHOT_EVERY,
        )
        .expect("replica");
        Node {
            db,
            core,
            applied: BTreeMap::new(),
            skew,
            latest: 0,
            reads: vec![],
            join,
        }
    }
}

/// Sets the time a command carries, as a leader's loop stamps it (a command without one is
/// left alone).
fn stamp(cmd: &mut Command, t: u64) {
    match cmd {
        Command::SubmitJob(s) => s.now = t,
        Command::CancelJob { now, .. }
        | Command::RegisterWorker { now, .. }
        | Command::Heartbeat { now, .. }
        | Command::StartAttempt { now, .. }
        | Command::ReportProgress { now, .. }
        | Command::ReportRankExit { now, .. }
        | Command::Tick { now } => *now = t,
        Command::CreateToken(token) => token.created_at = t,
        Command::Cordon { .. }
        | Command::Uncordon { .. }
        | Command::ResumeJob { .. }
        | Command::Configure(_)
        | Command::DeleteJob { .. }
        | Command::RevokeToken { .. }
        | Command::SetCredentialKey { .. } => {}
    }
}

/// What a proposer answered for one proposal, and when.
struct Answer {
    index: u64,
    commands: Vec<Command>,
    results: Vec<Result<Vec<Effect>, ApplyError>>,
    at: u64,
}

struct Sim {
    rng: ChaCha8Rng,
    nodes: BTreeMap<u64, Node>,
    in_flight: Vec<Message>,
    leaders: BTreeMap<u64, u64>,
    /// The simulation's clock, in ms: each round is a 20 ms tick.
    time: u64,
    next_token: u64,
    commands: Gen,
    /// Answered proposals: token → what the proposer answered.
    acknowledged: BTreeMap<u64, Answer>,
    /// When each proposal was made (the simulation's clock).
    invoked: BTreeMap<u64, u64>,
    /// Proposals made: token → commands.
    proposed: BTreeMap<u64, Vec<Command>>,
    /// Every entry any replica ever applied, by index: an index applied twice, anywhere,
    /// must hold the same commands (so nothing applied is ever overwritten).
    history: BTreeMap<u64, Vec<Command>>,
    /// Times a replica's state was replaced by a snapshot from the leader.
    restores: u64,
    dir: std::path::PathBuf,
    wiped: u64,
    /// Replicas whose messages, both ways, are lost (a partition).
    cut_off: BTreeSet<u64>,
    /// Membership changes answered by their proposer (tokens).
    changes_answered: BTreeSet<u64>,
    /// Replicas that applied their own removal and stopped.
    removed: BTreeSet<u64>,
    /// The index at which each pair of replicas' states was last compared.
    compared: BTreeMap<(u64, u64), u64>,
}

impl Sim {
    fn new(seed: u64, dir: &std::path::Path) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let nodes = NODES
            .iter()
            .map(|&id| {
                let db = sled::Config::new()
                    .path(dir.join(format!("node-{id}")))
                    .open()
                    .expect("sled");
                let skew = rng.random_range(-5_000..5_000);
                (id, Node::start(id, db, skew, false))
            })
            .collect();
        Sim {
            rng,
            nodes,
            in_flight: vec![],
            leaders: BTreeMap::new(),
            time: 1_000_000,
            next_token: 0,
            commands: Gen::new(seed),
            acknowledged: BTreeMap::new(),
            invoked: BTreeMap::new(),
            proposed: BTreeMap::new(),
            history: BTreeMap::new(),
            restores: 0,
            dir: dir.to_path_buf(),
            wiped: 0,
            cut_off: BTreeSet::new(),
            changes_answered: BTreeSet::new(),
            removed: BTreeSet::new(),
            compared: BTreeMap::new(),
        }
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .find(|(_, n)| n.core.serving())
            .map(|(id, _)| *id)
    }

    /// Asks the serving leader for a membership change: the token its answer will carry,
    /// or why it refused.
    fn change(&mut self, op: MemberOp) -> Result<u64, String> {
        let id = self.leader().ok_or("no leader")?;
        self.next_token += 1;
        let token = self.next_token;
        let n = self.nodes.get_mut(&id).expect("a node");
        n.core.propose_member_change(op, token)?;
        Ok(token)
    }

    /// Starts replica `id` on an empty disk, joining the running cluster.
    fn join(&mut self, id: u64) {
        let db = sled::Config::new()
            .path(self.dir.join(format!("node-{id}")))
            .open()
            .expect("sled");
        self.nodes.insert(id, Node::start(id, db, 0, true));
    }

    /// Every replica's members (voters, learners), as applied there.
    fn members(&self) -> BTreeMap<u64, (Vec<u64>, Vec<u64>)> {
        self.nodes
            .iter()
            .map(|(id, n)| {
                let book = n.core.members();
                (
                    *id,
                    (book.voters(), book.learners.iter().copied().collect()),
                )
            })
            .collect()
    }

    /// One round: every node ticks, some messages are delivered (with `loss` dropped and a few
    /// duplicated), maybe a proposal on a leader, then every node's ready.
    fn round(&mut self, loss: f64, propose: bool) {
        self.time += 20;
        for n in self.nodes.values_mut() {
            n.core.tick();
        }
        let mut msgs = std::mem::take(&mut self.in_flight);
        // Reordered: deliver a random permutation, keep some for later rounds.
        for i in (1..msgs.len()).rev() {
            let j = self.rng.random_range(0..=i);
            msgs.swap(i, j);
        }
        for m in msgs {
            let roll: f64 = self.rng.random();
            if roll < loss {
                continue;
            }
            if roll < loss + 0.1 {
                self.in_flight.push(m);
                continue;
            }
            if roll > 0.98 {
                self.in_flight.push(m.clone());
            }
            if self.cut_off.contains(&m.from) || self.cut_off.contains(&m.to) {
                continue;
            }
            // As the peer transport does: a sender that is not a member is refused, and told
            // by which membership.
            let judged_at = self
                .nodes
                .get(&m.to)
                .map(|n| n.core.members())
                .filter(|book| !book.contains(m.from))
                .map(|book| book.changed_at);
            if let Some(at) = judged_at {
                let gone = self
                    .nodes
                    .get_mut(&m.from)
                    .is_some_and(|sender| sender.core.refused_by(m.to, at).is_err());
                if gone {
                    self.nodes.remove(&m.from);
                    self.removed.insert(m.from);
                }
                continue;
            }
            if let Some(n) = self.nodes.get_mut(&m.to) {
                n.core.step(m);
            }
        }
        if propose {
            self.propose();
        }
        // As the coordinator's loop does: a learner that caught up is promoted.
        if let Some(id) = self.leader()
            && let Some(node) = self.nodes[&id].core.learner_to_promote()
        {
            self.next_token += 1;
            let token = self.next_token;
            let n = self.nodes.get_mut(&id).expect("a node");
            n.core
                .propose_member_change(MemberOp::Promote { node }, token)
                .expect("promoting");
        }
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.advance(id);
        }
        self.check();
    }

    /// A batch of one to three commands on the serving leader, stamped by its skewed clock.
    fn propose(&mut self) {
        let Some(id) = self
            .nodes
            .iter()
            .find(|(_, n)| n.core.serving())
            .map(|(id, _)| *id)
        else {
            return;
        };
        let n = &self.nodes[&id];
        let wall = self.time.saturating_add_signed(n.skew);
        let now = n.core.clock(wall);
        let count = self.rng.random_range(1..=3);
        let mut batch = vec![];
        for _ in 0..count {
            let mut cmd = self.commands.next(n.core.state());
            stamp(&mut cmd, now);
            batch.push(cmd);
        }
        self.next_token += 1;
        self.proposed.insert(self.next_token, batch.clone());
        self.invoked.insert(self.next_token, self.time);
        let n = self.nodes.get_mut(&id).expect("a node");
        n.core
            .propose(batch, vec![], self.next_token)
            .expect("propose");
    }

    fn advance(&mut self, id: u64) {
        let n = self.nodes.get_mut(&id).expect("a node");
        let adv = n.core.advance().expect("advance");
        self.in_flight.extend(adv.messages);
        n.reads.extend(adv.reads);
        if adv.restored {
            self.restores += 1;
        }
        if adv.removed {
            self.nodes.remove(&id);
            self.removed.insert(id);
            return;
        }
        for a in adv.applied {
            if a.commands.is_empty() && a.records.is_empty() {
                // A membership change, answered to its proposer.
                let token = a.token.expect("only a proposer hears of its change");
                assert!(
                    self.changes_answered.insert(token),
                    "change {token} answered twice"
                );
                continue;
            }
            let seen = self
                .history
                .entry(a.index)
                .or_insert_with(|| a.commands.clone());
            assert_eq!(
                *seen, a.commands,
                "node {id} applied other commands at {} than were applied there before",
                a.index
            );
            let accepted = a.commands.iter().zip(&a.results).filter(|(_, r)| r.is_ok());
            for t in accepted.filter_map(|(c, _)| c.now()) {
                assert!(
                    t >= n.latest,
                    "node {id} applied time {t} after {} at index {}",
                    n.latest,
                    a.index
                );
                n.latest = t;
            }
            if let Some(old) = n.applied.insert(a.index, a.commands.clone()) {
                assert_eq!(old, a.commands, "node {id} applied {} twice", a.index);
            }
            if let Some(token) = a.token {
                assert_eq!(
                    self.proposed.get(&token),
                    Some(&a.commands),
                    "node {id} answered proposal {token} with other commands"
                );
                let answer = Answer {
                    index: a.index,
                    commands: a.commands,
                    results: a.results,
                    at: self.time,
                };
                let first = self.acknowledged.insert(token, answer);
                assert!(first.is_none(), "proposal {token} answered twice");
            }
        }
    }

    fn check(&mut self) {
        for (id, n) in &self.nodes {
            let r = n.core.replica();
            if r.is_leader() {
                let other = *self.leaders.entry(r.term()).or_insert(*id);
                assert_eq!(other, *id, "two leaders in term {}", r.term());
            }
        }
        // Logs: every entry applied anywhere was checked against `history` as it was
        // applied (see `advance`), so applied logs are prefixes of one another.
        // States: compared once per pair of replicas and index they share.
        let nodes: Vec<(&u64, &Node)> = self.nodes.iter().collect();
        for (i, (a_id, a)) in nodes.iter().enumerate() {
            for (b_id, b) in &nodes[i + 1..] {
                let index = a.core.applied();
                if index == b.core.applied()
                    && self.compared.insert((**a_id, **b_id), index) != Some(index)
                {
                    assert!(
                        a.core.state() == b.core.state(),
                        "replicas {a_id} and {b_id} at index {index} hold different states"
                    );
                }
            }
        }
    }

    /// Replaces a replica's disk with an empty one; the others' transports notice its new
    /// incarnation (`peer_lost_log`).
    fn wipe(&mut self, id: u64) {
        let skew = self.nodes.remove(&id).expect("a node").skew;
        self.wiped += 1;
        let db = sled::Config::new()
            .path(self.dir.join(format!("node-{id}-disk-{}", self.wiped)))
            .open()
            .expect("sled");
        self.nodes.insert(id, Node::start(id, db, skew, false));
        self.in_flight.retain(|m| m.to != id);
        for n in self.nodes.values_mut() {
            n.core.peer_lost_log(id);
        }
    }

    /// Drops a replica's memory and starts it again from its storage.
    fn crash(&mut self, id: u64) {
        let old = self.nodes.remove(&id).expect("a node");
        self.nodes
            .insert(id, Node::start(id, old.db, old.skew, old.join));
        self.in_flight.retain(|m| m.to != id);
    }
}

#[test]
fn three_replicas_agree_through_loss_reordering_crashes_and_snapshots() {
    let restores: u64 = (1..=6).map(run).sum();
    assert!(restores > 0, "no replica ever caught up from a snapshot");
}

/// One seeded run; how many times a replica caught up from a snapshot.
fn run(seed: u64) -> u64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sim = Sim::new(seed, dir.path());
    for round in 0..1_500 {
        let loss = if (300..900).contains(&round) {
            0.2
        } else {
            0.02
        };
        sim.round(loss, round % 3 == 0);
        if round % 250 == 125 {
            // Crash the leader if there is one, else node 1.
            let victim = sim
                .nodes
                .iter()
                .find(|(_, n)| n.core.replica().is_leader())
                .map_or(1, |(id, _)| *id);
            sim.crash(victim);
        }
    }
    // Heal: no loss until everyone holds the whole log; then a follower loses its disk and
    // is rebuilt from the others (by snapshot: the log behind it is compacted) while
    // proposals go on; then no proposals until everyone applied the same log.
    for _ in 0..200 {
        sim.round(0.0, false);
    }
    let follower = sim
        .nodes
        .iter()
        .find(|(_, n)| !n.core.replica().is_leader())
        .map(|(id, _)| *id)
        .expect("a follower");
    sim.wipe(follower);
    for round in 0..300 {
        sim.round(0.0, round % 3 == 0);
    }
    for _ in 0..200 {
        sim.round(0.0, false);
    }
    agreed(&sim);
    assert!(
        sim.acknowledged.len() > 100,
        "only {} acknowledged",
        sim.acknowledged.len()
    );
    assert!(sim.leaders.len() > 2, "the leadership never changed");
    sim.restores
}

/// Once the network has healed and proposals stopped: every replica applied the same log
/// to the same state; every answered proposal is in it where it was answered, once; the
/// answered history is linearizable.
fn agreed(sim: &Sim) {
    let nodes: Vec<&Node> = sim.nodes.values().collect();
    let applied: BTreeSet<u64> = nodes.iter().map(|n| n.core.applied()).collect();
    assert_eq!(
        applied.len(),
        1,
        "the replicas did not converge: {applied:?}"
    );
    assert!(
        nodes
            .windows(2)
            .all(|w| w[0].core.state() == w[1].core.state()),
        "the states differ"
    );
    assert!(
        !nodes[0].core.state().jobs.is_empty(),
        "no job was ever submitted"
    );
    // Every answered proposal stays where it was answered (the history never changed an
    // applied index), within what every replica now holds, and no two share an index.
    let mut indexes = BTreeSet::new();
    let applied_to = nodes[0].core.applied();
    for (token, a) in &sim.acknowledged {
        assert!(
            indexes.insert(a.index),
            "two proposals answered at {}",
            a.index
        );
        assert_eq!(
            sim.history.get(&a.index),
            Some(&a.commands),
            "proposal {token} moved"
        );
        assert!(
            a.index <= applied_to,
            "proposal {token} at {} was lost",
            a.index
        );
    }
    linearizable(sim);
}

/// Rounds (with proposals, `loss` of the messages lost) until `done` holds; panics naming
/// `what` if it does not within `limit` rounds.
fn until(sim: &mut Sim, what: &str, loss: f64, limit: usize, done: impl Fn(&Sim) -> bool) {
    for round in 0..limit {
        if done(sim) {
            return;
        }
        sim.round(loss, round % 3 == 0);
    }
    panic!(
        "{what} did not happen within {limit} rounds; members {:?}; replicas {:?}",
        sim.members(),
        sim.nodes
            .iter()
            .map(|(id, n)| (
                *id,
                n.core.replica().role(),
                n.core.replica().commit_index(),
                n.core.applied(),
                n.core.members().changed_at
            ))
            .collect::<Vec<_>>()
    );
}

/// Failover after failover: each leader is crashed as soon as it has answered a few
/// proposals, with messages lost, duplicated and reordered throughout; nothing answered is
/// lost, and the usual invariants hold after every round.
#[test]
fn a_thousand_leader_crashes_lose_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sim = Sim::new(1_000, dir.path());
    let mut failovers = 0;
    let mut answered = 0;
    while failovers < 1_000 {
        sim.round(0.02, true);
        if let Some(leader) = sim.leader()
            && sim.acknowledged.len() >= answered + 3
        {
            sim.crash(leader);
            failovers += 1;
            answered = sim.acknowledged.len();
        }
    }
    for _ in 0..200 {
        sim.round(0.0, false);
    }
    agreed(&sim);
    assert!(
        sim.leaders.len() >= 1_000,
        "{} terms had a leader",
        sim.leaders.len()
    );
}

/// A fourth replica joins a running cluster (as a learner, from a snapshot: the log behind
/// it is compacted), is promoted once it has caught up, survives its leader's crash as one of
/// four voters; a founding member is then removed and stops; the leader cannot remove
/// itself. Proposals go on throughout, and the usual invariants hold to the end.
#[test]
fn members_join_are_promoted_and_leave_while_proposals_go_on() {
    for seed in 11..=13 {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut sim = Sim::new(seed, dir.path());
        until(&mut sim, "a first leader", 0.02, 1_000, |s| {
            s.leader().is_some() && s.acknowledged.len() > 30
        });
        let add = sim
            .change(MemberOp::Add {
                node: 4,
                address: "sim-4:1".into(),
            })
            .expect("adding a member");
        assert_eq!(
            sim.change(MemberOp::Add {
                node: 5,
                address: "sim-5:1".into(),
            }),
            Err("another membership change is under way; retry once it is applied".into())
        );
        sim.join(4);
        until(&mut sim, "node 4's promotion", 0.05, 3_000, |s| {
            s.members()
                .values()
                .all(|(voters, learners)| voters == &[1, 2, 3, 4] && learners.is_empty())
        });
        assert!(
            sim.changes_answered.contains(&add),
            "the addition was never answered"
        );
        // Four voters: any three make a majority, so the leader's crash is survived.
        let leader = sim.leader().expect("a leader");
        sim.crash(leader);
        let acked = sim.acknowledged.len();
        until(&mut sim, "progress after the crash", 0.05, 3_000, |s| {
            s.acknowledged.len() > acked + 20
        });
        let leader = sim.leader().expect("a leader");
        let refused = sim.change(MemberOp::Remove { node: leader });
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("hand leadership to another member first")),
            "{refused:?}"
        );
        let victim = (1..=3).find(|id| *id != leader).expect("a follower");
        let remove = sim
            .change(MemberOp::Remove { node: victim })
            .expect("removing a member");
        // The removed member stops, whether it applied its removal or heard of it from a
        // peer that refused it.
        until(&mut sim, "the removal", 0.05, 3_000, |s| {
            s.changes_answered.contains(&remove)
                && s.removed.contains(&victim)
                && s.members()
                    .values()
                    .all(|(voters, _)| !voters.contains(&victim))
        });
        for _ in 0..200 {
            sim.round(0.0, false);
        }
        agreed(&sim);
        assert_eq!(
            sim.nodes.keys().copied().collect::<Vec<_>>().len(),
            3,
            "seed {seed}: nodes {:?}, removed {:?}, members {:?}",
            sim.nodes.keys().collect::<Vec<_>>(),
            sim.removed,
            sim.members()
        );
    }
}

/// A leader cut off from the others never confirms a read (it would serve a state the new
/// leader may already have moved past); the new leader confirms them at once.
#[test]
fn a_leader_cut_off_from_the_majority_confirms_no_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sim = Sim::new(7, dir.path());
    let leader_of = |sim: &Sim| {
        sim.nodes
            .iter()
            .find(|(_, n)| n.core.serving())
            .map(|(id, _)| *id)
    };
    let mut old = None;
    for round in 0..500 {
        sim.round(0.0, round % 3 == 0);
        old = leader_of(&sim);
        if old.is_some() && round > 100 {
            break;
        }
    }
    let old = old.expect("a leader");
    sim.cut_off.insert(old);
    assert!(sim.nodes.get_mut(&old).expect("node").core.read_index(1));
    let mut new = None;
    for _ in 0..500 {
        sim.round(0.0, false);
        assert!(
            sim.nodes[&old].reads.is_empty(),
            "the cut-off leader confirmed a read"
        );
        new = leader_of(&sim).filter(|id| *id != old);
        if new.is_some() {
            break;
        }
    }
    let new = new.expect("a new leader among the majority");
    // The old leader may still believe it leads (its check-quorum interval has not run out):
    // that is what the read index is for.
    assert!(sim.nodes.get_mut(&new).expect("node").core.read_index(2));
    for _ in 0..20 {
        sim.round(0.0, false);
    }
    assert!(
        sim.nodes[&new].reads.iter().any(|(ctx, _)| *ctx == 2),
        "the new leader confirmed no read"
    );
    assert!(sim.nodes[&old].reads.is_empty());
}

/// The history of answered proposals is linearizable with the log as its order: replaying the
/// log on one state machine, sequentially, gives every answered proposal the results its
/// proposer answered (the job ids of submissions among them), and a proposal answered before
/// another was made comes before it in the log (real-time order).
fn linearizable(sim: &Sim) {
    let mut state = ClusterState::new(ClusterConfig::default());
    let mut replayed = BTreeMap::new();
    for (index, cmds) in &sim.history {
        let results: Vec<_> = cmds.iter().map(|c| state.apply(c)).collect();
        replayed.insert(*index, results);
    }
    for (token, a) in &sim.acknowledged {
        assert_eq!(
            replayed.get(&a.index),
            Some(&a.results),
            "proposal {token} was answered otherwise than its place in the log gives"
        );
    }
    let mut by_answer: Vec<(&u64, &Answer)> = sim.acknowledged.iter().collect();
    by_answer.sort_by_key(|(_, a)| a.at);
    for (token, a) in &by_answer {
        for (other, b) in &by_answer {
            if a.at < sim.invoked[other] {
                assert!(
                    a.index < b.index,
                    "proposal {token} was answered before {other} was made, yet comes after it"
                );
            }
        }
    }
}
