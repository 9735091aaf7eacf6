//! The tokens and credentials themselves: how they are minted, what their text looks like,
//! and how a presented one is checked (always in constant time).
//!
//! Text forms, each with a prefix saying what it is (so a leaked one is recognisable and a
//! worker's is never mistaken for a person's):
//! - `cvu.ID.SECRET`: an API token of a person; the state keeps SHA-256(SECRET).
//! - `cvw.WORKER.MAC`: a worker daemon's credential, MAC = HMAC(key, worker, instance).
//! - `cvr.JOB.ATTEMPT.RANK.MAC`: a rank's, MAC = HMAC(key, job, attempt, rank).
//! - anything else: the bootstrap administrator token or the join token of the
//!   coordinator's configuration, compared by hash.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::model::{JobId, WorkerId};

/// Bytes of a SHA-256 hash (and of a cluster key).
pub const HASH_LEN: usize = 32;
/// Random bytes in an API token's secret part.
const SECRET_BYTES: usize = 32;
/// Random bytes in an API token's id.
const ID_BYTES: usize = 6;

/// What a caller presented, taken apart (nothing checked yet).
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    Api {
        id: &'a str,
        secret: &'a str,
    },
    Worker {
        worker: WorkerId,
        mac: &'a str,
    },
    Rank {
        job: JobId,
        generation: u64,
        rank: usize,
        mac: &'a str,
    },
    /// A configured token (bootstrap administrator, join), compared whole.
    Other(&'a str),
}

impl<'a> Presented<'a> {
    pub fn parse(text: &'a str) -> Presented<'a> {
        let parts: Vec<&str> = text.split('.').collect();
        match parts.as_slice() {
            ["cvu", id, secret] => Presented::Api { id, secret },
            ["cvw", worker, mac] => match worker.parse() {
                Ok(w) => Presented::Worker {
                    worker: WorkerId(w),
                    mac,
                },
                Err(_) => Presented::Other(text),
            },
            ["cvr", job, generation, rank, mac] => {
                match (job.parse(), generation.parse(), rank.parse()) {
                    (Ok(j), Ok(generation), Ok(rank)) => Presented::Rank {
                        job: JobId(j),
                        generation,
                        rank,
                        mac,
                    },
                    _ => Presented::Other(text),
                }
            }
            _ => Presented::Other(text),
        }
    }
}

pub fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Equal, compared without an early exit: the time taken says nothing about where two
/// secrets differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

/// A fresh random cluster key.
pub fn new_key() -> Vec<u8> {
    let mut key = vec![0u8; HASH_LEN];
    rand::rng().fill_bytes(&mut key);
    key
}

/// A new API token: its id, the hash the state keeps, and the text shown once to its owner.
pub fn new_api_token() -> (String, Vec<u8>, String) {
    let id = random_hex(ID_BYTES);
    let secret = random_hex(SECRET_BYTES);
    let text = format!("cvu.{id}.{secret}");
    (id, hash(&secret), text)
}

/// HMAC-SHA256 of `parts` (each length-prefixed, so no two lists of parts collide) under
/// `key`, in hex.
fn mac(key: &[u8], parts: &[&[u8]]) -> String {
    // HMAC takes keys of any length: this cannot fail.
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(key) else {
        unreachable!("HMAC accepts every key length")
    };
    for p in parts {
        m.update(&(p.len() as u64).to_le_bytes());
        m.update(p);
    }
    hex(&m.finalize().into_bytes())
}

fn worker_mac(key: &[u8], worker: WorkerId, instance: &str) -> String {
    mac(
        key,
        &[b"worker", &worker.0.to_le_bytes(), instance.as_bytes()],
    )
}

fn rank_mac(key: &[u8], job: JobId, generation: u64, rank: usize) -> String {
    mac(
        key,
        &[
            b"rank",
            &job.0.to_le_bytes(),
            &generation.to_le_bytes(),
            &(rank as u64).to_le_bytes(),
        ],
    )
}

/// The credential of the daemon `instance` registered as `worker`.
pub fn worker_credential(key: &[u8], worker: WorkerId, instance: &str) -> String {
    format!("cvw.{}.{}", worker.0, worker_mac(key, worker, instance))
}

pub fn worker_mac_matches(key: &[u8], worker: WorkerId, instance: &str, given: &str) -> bool {
    same(
        worker_mac(key, worker, instance).as_bytes(),
        given.as_bytes(),
    )
}

/// The credential of rank `rank` of attempt `generation` of `job`.
pub fn rank_credential(key: &[u8], job: JobId, generation: u64, rank: usize) -> String {
    format!(
        "cvr.{}.{generation}.{rank}.{}",
        job.0,
        rank_mac(key, job, generation, rank)
    )
}

pub fn rank_mac_matches(key: &[u8], job: JobId, generation: u64, rank: usize, given: &str) -> bool {
    same(
        rank_mac(key, job, generation, rank).as_bytes(),
        given.as_bytes(),
    )
}

/// The secret an attempt's ranks prove to each other in their ring handshake.
pub fn ring_secret(key: &[u8], job: JobId, generation: u64) -> String {
    mac(
        key,
        &[b"ring", &job.0.to_le_bytes(), &generation.to_le_bytes()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_parse_back_and_check_only_under_their_key() {
        let key = new_key();
        let other = new_key();
        let w = worker_credential(&key, WorkerId(3), "inst-a");
        let Presented::Worker { worker, mac } = Presented::parse(&w) else {
            panic!("{w} is a worker credential")
        };
        assert_eq!(worker, WorkerId(3));
        assert!(worker_mac_matches(&key, worker, "inst-a", mac));
        assert!(!worker_mac_matches(&key, worker, "inst-b", mac));
        assert!(!worker_mac_matches(&other, worker, "inst-a", mac));

        let r = rank_credential(&key, JobId(7), 2, 1);
        let Presented::Rank {
            job,
            generation,
            rank,
            mac,
        } = Presented::parse(&r)
        else {
            panic!("{r} is a rank credential")
        };
        assert_eq!((job, generation, rank), (JobId(7), 2, 1));
        assert!(rank_mac_matches(&key, job, generation, rank, mac));
        assert!(!rank_mac_matches(&key, job, generation, 0, mac));
        assert!(!rank_mac_matches(&key, job, 3, rank, mac));

        let (id, hashed, text) = new_api_token();
        let Presented::Api { id: got, secret } = Presented::parse(&text) else {
            panic!("{text} is an API token")
        };
        assert_eq!(got, id);
        assert!(same(&hash(secret), &hashed));
        assert_eq!(
            Presented::parse("cvw.x.y"),
            Presented::Other("cvw.x.y"),
            "a malformed credential is only an unknown token"
        );
    }
}
