//! Rendezvous: each rank of an attempt publishes its collective address (rank 0 also the NCCL
//! unique id); once all have, every rank gets the full list. Kept in memory only: after a
//! coordinator restart ranks simply publish again.

use std::collections::HashMap;

use crate::error::ApplyError;
use crate::model::JobId;
use crate::server::request::{Published, RankKey, Reply};

struct Round {
    addresses: Vec<Option<String>>,
    nccl_id: Vec<u8>,
    waiters: Vec<Reply<Result<Published, ApplyError>>>,
    done: Option<Published>,
}

#[derive(Default)]
pub struct RendezvousTable {
    rounds: HashMap<(JobId, u64), Round>,
}

impl RendezvousTable {
    /// Records `key`'s address and answers every waiting rank once the round is complete. A
    /// rank asking again after completion (a retried call) gets the same answer at once.
    pub fn publish(
        &mut self,
        key: RankKey,
        world: usize,
        address: String,
        nccl_id: Vec<u8>,
        reply: Reply<Result<Published, ApplyError>>,
    ) {
        let round = self
            .rounds
            .entry((key.job, key.generation))
            .or_insert_with(|| Round {
                addresses: vec![None; world],
                nccl_id: vec![],
                waiters: vec![],
                done: None,
            });
        if let Some(done) = &round.done {
            let _ = reply.send(Ok(done.clone()));
            return;
        }
        if let Some(slot) = round.addresses.get_mut(key.rank) {
            *slot = Some(address);
        }
        if key.rank == 0 {
            round.nccl_id = nccl_id;
        }
        round.waiters.push(reply);
        if round.addresses.iter().all(Option::is_some) {
            let done = Published {
                addresses: round.addresses.iter().flatten().cloned().collect(),
                nccl_id: round.nccl_id.clone(),
            };
            for w in round.waiters.drain(..) {
                let _ = w.send(Ok(done.clone()));
            }
            round.done = Some(done);
        }
    }

    /// Drops the rounds of `job` up to `generation`; ranks still waiting get an error saying
    /// their attempt ended.
    pub fn forget(&mut self, job: JobId, generation: u64) {
        self.rounds.retain(|(j, g), round| {
            let keep = *j != job || *g > generation;
            if !keep {
                for w in round.waiters.drain(..) {
                    let _ = w.send(Err(ApplyError::AttemptEnded {
                        job: *j,
                        generation: *g,
                    }));
                }
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn key(rank: usize) -> RankKey {
        RankKey {
            job: JobId(1),
            generation: 2,
            rank,
        }
    }

    #[test]
    fn every_rank_gets_all_addresses_once_the_last_publishes() {
        let mut t = RendezvousTable::default();
        let (tx0, mut rx0) = oneshot::channel();
        t.publish(key(0), 2, "a:1".into(), vec![7], tx0);
        assert!(rx0.try_recv().is_err(), "rank 0 waits for rank 1");
        let (tx1, mut rx1) = oneshot::channel();
        t.publish(key(1), 2, "b:2".into(), vec![], tx1);
        let want = Published {
            addresses: vec!["a:1".into(), "b:2".into()],
            nccl_id: vec![7],
        };
        assert_eq!(rx0.try_recv().unwrap().unwrap(), want);
        assert_eq!(rx1.try_recv().unwrap().unwrap(), want);
        // A retried call is answered at once.
        let (tx, mut rx) = oneshot::channel();
        t.publish(key(1), 2, "b:2".into(), vec![], tx);
        assert_eq!(rx.try_recv().unwrap().unwrap(), want);
    }

    #[test]
    fn forgetting_an_attempt_fails_its_waiting_ranks() {
        let mut t = RendezvousTable::default();
        let (tx0, mut rx0) = oneshot::channel();
        t.publish(key(0), 2, "a:1".into(), vec![], tx0);
        t.forget(JobId(1), 2);
        assert!(matches!(
            rx0.try_recv().unwrap(),
            Err(ApplyError::AttemptEnded { .. })
        ));
    }
}
