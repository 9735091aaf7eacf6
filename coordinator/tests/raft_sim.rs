//! A deterministic simulation of three replicas (seeded; in one process; real sled storage)
//! driving the coordinator's own `ReplicatedState`, the path a replicated coordinator runs:
//! messages are dropped, duplicated and reordered, replicas crash and restart from their
//! storage, snapshots are taken every few entries (so lagging replicas are sent one), each
//! replica's clock is skewed, leaders come and go, and at the end a follower loses its disk
//! and is rebuilt from the others. The proposals are real commands.
//!
//! Checked after every round: applied logs are prefixes of one another; replicas that applied
//! the same index hold equal states; at most one leader per term; time never goes backwards
//! in the commands a replica accepted, whichever skewed clock stamped them. Once the network heals: every replica holds the same
//! log and the same state, and every proposal whose proposer answered it is in that log, at
//! the index it was answered for, exactly once; and the answered history is linearizable with
//! the log as its order (replayed sequentially it gives every answer, job ids included, and
//! respects real-time order).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::random::Gen;
use convoy_coordinator::replication::{RaftStorage, ReplicatedState};
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
}

impl Node {
    fn start(id: u64, db: sled::Db, skew: i64) -> Node {
        let storage = RaftStorage::open(&db).expect("storage");
        let core = ReplicatedState::open(
            id,
            &NODES,
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
        Command::Cordon { .. }
        | Command::Uncordon { .. }
        | Command::ResumeJob { .. }
        | Command::Configure(_)
        | Command::DeleteJob { .. } => {}
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
                (id, Node::start(id, db, skew))
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
        }
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
            if let Some(n) = self.nodes.get_mut(&m.to) {
                n.core.step(m);
            }
        }
        if propose {
            self.propose();
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
        for a in adv.applied {
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
        let nodes: Vec<&Node> = self.nodes.values().collect();
        for a in &nodes {
            for b in &nodes {
                for (index, cmds) in &a.applied {
                    if let Some(other) = b.applied.get(index) {
                        assert_eq!(cmds, other, "logs differ at index {index}");
                    }
                }
                if a.core.applied() == b.core.applied() {
                    assert!(
                        a.core.state() == b.core.state(),
                        "replicas at index {} hold different states",
                        a.core.applied()
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
        self.nodes.insert(id, Node::start(id, db, skew));
        self.in_flight.retain(|m| m.to != id);
        for n in self.nodes.values_mut() {
            n.core.peer_lost_log(id);
        }
    }

    /// Drops a replica's memory and starts it again from its storage.
    fn crash(&mut self, id: u64) {
        let old = self.nodes.remove(&id).expect("a node");
        self.nodes.insert(id, Node::start(id, old.db, old.skew));
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
    linearizable(&sim);
    assert!(
        sim.acknowledged.len() > 100,
        "only {} acknowledged",
        sim.acknowledged.len()
    );
    assert!(sim.leaders.len() > 2, "the leadership never changed");
    sim.restores
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
