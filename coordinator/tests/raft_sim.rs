//! A deterministic simulation of three replicas (seeded; in one process; real sled storage):
//! messages are dropped, duplicated and reordered, replicas crash and restart from their
//! storage, and leaders come and go. The proposals are real commands (encoded log entries) that
//! each replica applies to its own `ClusterState`. Invariants checked after every round:
//! applied logs are prefixes of one another, at most one leader per term; once the network
//! heals, every replica holds the same log and the same state, every proposal a leader
//! acknowledged is applied exactly once.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::random::Gen;
use convoy_coordinator::log::codec;
use convoy_coordinator::replication::{RaftStorage, Replica};
use convoy_coordinator::{ClusterConfig, ClusterState};
use raft::eraftpb::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const NODES: [u64; 3] = [1, 2, 3];

struct Node {
    db: sled::Db,
    replica: Replica,
    /// What this replica applied, by index: rebuilt from its storage after a crash.
    applied: BTreeMap<u64, Vec<u8>>,
    /// The cluster state those entries built.
    state: ClusterState,
}

impl Node {
    fn start(id: u64, db: sled::Db) -> Node {
        let storage = RaftStorage::open(&db).expect("storage");
        Node {
            replica: Replica::new(id, &NODES, storage).expect("replica"),
            db,
            applied: BTreeMap::new(),
            state: ClusterState::new(ClusterConfig::default()),
        }
    }
}

struct Sim {
    rng: ChaCha8Rng,
    nodes: BTreeMap<u64, Node>,
    in_flight: Vec<Message>,
    leaders: BTreeMap<u64, u64>,
    next_value: u64,
    commands: Gen,
    acknowledged: BTreeSet<Vec<u8>>,
    /// Proposals made on a leader, by value, to recognise their acknowledgement.
    proposed_on: BTreeMap<Vec<u8>, u64>,
}

impl Sim {
    fn new(seed: u64, dir: &std::path::Path) -> Sim {
        let nodes = NODES
            .iter()
            .map(|&id| {
                let db = sled::Config::new()
                    .path(dir.join(format!("node-{id}")))
                    .open()
                    .expect("sled");
                (id, Node::start(id, db))
            })
            .collect();
        Sim {
            rng: ChaCha8Rng::seed_from_u64(seed),
            nodes,
            in_flight: vec![],
            leaders: BTreeMap::new(),
            next_value: 0,
            commands: Gen::new(seed),
            acknowledged: BTreeSet::new(),
            proposed_on: BTreeMap::new(),
        }
    }

    /// One round: every node ticks, some messages are delivered (with `loss` dropped and a few
    /// duplicated), maybe a proposal on a leader, then every node's ready.
    fn round(&mut self, loss: f64, propose: bool) {
        for n in self.nodes.values_mut() {
            n.replica.tick();
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
            if let Some(n) = self.nodes.get_mut(&m.to) {
                let _ = n.replica.step(m);
            }
        }
        if propose {
            let leader = self
                .nodes
                .iter()
                .find(|(_, n)| n.replica.is_leader())
                .map(|(id, _)| *id);
            if let Some(id) = leader {
                self.next_value += 1;
                // A nonce first, so that equal commands are distinct proposals.
                let cmd = self.commands.next(&self.nodes[&id].state);
                let mut value = self.next_value.to_le_bytes().to_vec();
                value.extend(codec::encode_entry(&cmd, 0).expect("encode"));
                if let Some(n) = self.nodes.get_mut(&id)
                    && n.replica.propose(value.clone()).is_ok()
                {
                    self.proposed_on.insert(value, id);
                }
            }
        }
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            let n = self.nodes.get_mut(&id).expect("a node");
            let out = n.replica.ready().expect("ready");
            for (index, data) in out.committed {
                if let Some(old) = n.applied.insert(index, data.clone()) {
                    assert_eq!(
                        old, data,
                        "node {id} applied index {index} twice, differently"
                    );
                    continue;
                }
                let cmd = codec::decode_entry(&data[8..]).expect("a command");
                let _ = n.state.apply(&cmd); // rejections are part of the history too
                if n.replica.is_leader() && self.proposed_on.get(&data) == Some(&id) {
                    self.acknowledged.insert(data);
                }
            }
            self.in_flight.extend(out.messages);
        }
        self.check();
    }

    fn check(&mut self) {
        for (id, n) in &self.nodes {
            if n.replica.is_leader() {
                let term = n.replica.term();
                let other = *self.leaders.entry(term).or_insert(*id);
                assert_eq!(other, *id, "two leaders in term {term}");
            }
        }
        let logs: Vec<&BTreeMap<u64, Vec<u8>>> = self.nodes.values().map(|n| &n.applied).collect();
        for a in &logs {
            for b in &logs {
                for (index, data) in a.iter() {
                    if let Some(other) = b.get(index) {
                        assert_eq!(data, other, "logs differ at index {index}");
                    }
                }
            }
        }
    }

    /// Drops a replica's memory and starts it again from its storage.
    fn crash(&mut self, id: u64) {
        let db = self.nodes.remove(&id).expect("a node").db;
        self.nodes.insert(id, Node::start(id, db));
        self.in_flight.retain(|m| m.to != id);
    }
}

#[test]
fn three_replicas_agree_through_loss_reordering_and_crashes() {
    for seed in 1..=6 {
        run(seed);
    }
}

fn run(seed: u64) {
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
                .find(|(_, n)| n.replica.is_leader())
                .map_or(1, |(id, _)| *id);
            sim.crash(victim);
        }
    }
    // Heal: no loss, no proposals, until everyone applied the same log.
    for _ in 0..400 {
        sim.round(0.0, false);
    }
    let logs: Vec<&BTreeMap<u64, Vec<u8>>> = sim.nodes.values().map(|n| &n.applied).collect();
    assert!(
        logs.windows(2).all(|w| w[0] == w[1]),
        "the logs did not converge"
    );
    let states: Vec<&ClusterState> = sim.nodes.values().map(|n| &n.state).collect();
    assert!(states.windows(2).all(|w| w[0] == w[1]), "the states differ");
    assert!(!states[0].jobs.is_empty(), "no job was ever submitted");
    let applied: Vec<&Vec<u8>> = logs[0].values().collect();
    let distinct: BTreeSet<&Vec<u8>> = applied.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        applied.len(),
        "a proposal was applied twice"
    );
    for value in &sim.acknowledged {
        assert!(
            distinct.contains(value),
            "acknowledged {value:?} is missing"
        );
    }
    assert!(
        sim.acknowledged.len() > 100,
        "only {} acknowledged",
        sim.acknowledged.len()
    );
    assert!(sim.leaders.len() > 2, "the leadership never changed");
}
