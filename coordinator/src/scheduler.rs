//! The gang scheduler: a pure function from a [`ClusterState`] snapshot to a [`Plan`].
//!
//! It reads no clock and changes nothing; the I/O loop turns each [`Decision`] into a
//! [`Command::StartAttempt`] and applies it like any other command (the state machine checks
//! the placement again, so a plan made from an old snapshot cannot over-commit a worker).
//!
//! # Rules
//!
//! * **Gang.** A job of `world_size` N starts only when N rank places are free at once on
//!   alive, uncordoned workers; a job is never partly placed and never holds slots while it
//!   waits. A CPU rank takes one slot; a CUDA rank takes one slot and one GPU.
//! * **Order.** Queued jobs are considered by priority (higher first), then submit order
//!   (FIFO within a priority).
//! * **Unschedulable jobs do not block.** A job needing more than the alive, uncordoned
//!   cluster could ever give it (even empty) is reported in [`Plan::unschedulable`] with a
//!   message and skipped; it stays queued and is reconsidered when workers join.
//! * **Backfill that cannot delay the head** (EASY-style, without run-time estimates). The
//!   first job in queue order that does not fit now is the *head*; it is protected. The head
//!   can start only when some set of running gangs has finished. Let `free` be the places
//!   free now and `m` the smallest number of places that any set of running gangs returns
//!   such that `free + m ≥ N`. Whichever gangs finish first, at least `slack = free + m − N`
//!   places beyond the head's need are free at the moment it could start. A job behind the
//!   head may start now only if it fits now and its size is at most the remaining slack
//!   (each backfilled job uses up slack). So a backfilled job can never be the reason the
//!   head waits longer. Only the head is protected: jobs behind it that also wait may be
//!   passed by smaller ones. A CUDA head gets no slack (no backfill behind it) until GPU
//!   accounting is finer than slots.
//! * **Placement: best fit, then pack.** If one worker can hold the whole gang, the worker
//!   with the fewest free places that suffices (ties: lowest id) takes it, keeping ranks on
//!   one machine and large holes free for large jobs. Otherwise workers are filled in order
//!   of most free places (ties: lowest id), so the gang spans as few machines as possible.
//!   Ranks are numbered consecutively per worker, which keeps ring neighbours local.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::fmt;

use convoy_spec::Backend;

use crate::model::{Job, JobId, Millis, Usage, Worker, WorkerId};
use crate::state::{ClusterState, Command};

/// Start `job`'s attempt `generation` with `placement[rank]` = the worker of that rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub job: JobId,
    pub generation: u64,
    pub placement: Vec<WorkerId>,
}

impl Decision {
    /// The command that records this decision.
    pub fn into_command(self, now: Millis) -> Command {
        Command::StartAttempt {
            job: self.job,
            generation: self.generation,
            placement: self.placement,
            now,
        }
    }
}

/// Why a queued job does not start now. Decisions match on the variant (a held job becomes
/// startable with time alone); people read its one-line [`fmt::Display`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitReason {
    /// Requeued after a failed attempt and held this much longer, so that failed workers are
    /// detected before the gang is placed again.
    Held { remaining: Millis },
    /// Fewer places free now than the gang needs; `behind` is the protected head when this
    /// job is not the head itself.
    Capacity {
        needs: u32,
        free: u32,
        behind: Option<JobId>,
    },
    /// It fits now, but starting it could delay the head beyond what the backfill slack allows.
    WouldDelay { head: JobId, needs: u32, slack: u32 },
    /// More CPU places than the alive, uncordoned cluster has even when empty.
    TooManySlots { needs: u32, capacity: u32 },
    /// A CUDA job, but no alive, uncordoned worker has a GPU.
    NoGpuWorkers,
    /// More GPU places than the alive, uncordoned GPU workers have even when empty.
    TooManyGpus { needs: u32, capacity: u32 },
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::Held { remaining } => write!(
                f,
                "restarting in {remaining} ms (time for failed workers to be detected)"
            ),
            WaitReason::Capacity {
                needs,
                free,
                behind: None,
            } => write!(
                f,
                "waiting for capacity: needs {needs} slots; {free} free now"
            ),
            WaitReason::Capacity {
                needs,
                free,
                behind: Some(head),
            } => write!(
                f,
                "waiting for capacity: needs {needs} slots; {free} free now (behind {head})"
            ),
            WaitReason::WouldDelay { head, needs, slack } => write!(
                f,
                "would delay {head}, the first waiting job (needs {needs} slots; backfill slack {slack})"
            ),
            WaitReason::TooManySlots { needs, capacity } => write!(
                f,
                "needs {needs} slots; the cluster has {capacity} alive uncordoned"
            ),
            WaitReason::NoGpuWorkers => f.write_str(
                "backend = \"cuda\" needs GPU workers; no alive uncordoned worker reports a GPU",
            ),
            WaitReason::TooManyGpus { needs, capacity } => write!(
                f,
                "needs {needs} GPU slots; the cluster has {capacity} on alive uncordoned GPU workers"
            ),
        }
    }
}

/// A queued job and why it waits (for status listings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub job: JobId,
    pub reason: WaitReason,
}

/// The scheduler's answer for one snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Gangs to start now, in queue order.
    pub starts: Vec<Decision>,
    /// Jobs that could run on this cluster but wait (for capacity, or behind the head).
    pub waiting: Vec<Note>,
    /// Jobs this cluster cannot run even when empty.
    pub unschedulable: Vec<Note>,
}

/// Decides which queued jobs start and where at time `now`. Pure and deterministic. A job
/// requeued after a rank failure is held until its `not_before` (see
/// [`crate::ClusterConfig::restart_delay`]) and does not take part until then, not even as
/// the protected head; and no rank is placed on a [`Worker::silent`] one (it still counts as
/// capacity: it is not lost yet).
pub fn schedule_at(state: &ClusterState, now: Millis) -> Plan {
    let workers: Vec<&Worker> = state.workers.values().filter(|w| w.schedulable()).collect();
    let timeout = state.config.heartbeat_timeout;
    let fresh: Vec<&Worker> = workers
        .iter()
        .copied()
        .filter(|w| !w.silent(now, timeout))
        .collect();
    let mut usage = state.usage();
    // Places each running gang returns to the schedulable cluster when it ends.
    let mut running: Vec<u32> = state
        .jobs
        .values()
        .filter_map(|j| j.live_attempt())
        .map(|a| {
            a.placement
                .iter()
                .filter(|w| state.workers.get(w).is_some_and(|w| w.schedulable()))
                .count() as u32
        })
        .collect();

    let mut queue: Vec<&Job> = state
        .jobs
        .values()
        .filter(|j| j.state == crate::model::JobState::Queued)
        .collect();
    queue.sort_by_key(|j| (Reverse(j.priority), j.seq));

    let mut plan = Plan::default();
    queue.retain(|j| {
        if j.not_before <= now {
            return true;
        }
        plan.waiting.push(Note {
            job: j.id,
            reason: WaitReason::Held {
                remaining: j.not_before - now,
            },
        });
        false
    });
    // The protected head and the slack left behind it.
    let mut head: Option<(JobId, u32)> = None;
    for job in queue {
        let n = u32::try_from(job.world_size).unwrap_or(u32::MAX);
        if let Some(reason) = unschedulable_reason(job, n, &workers) {
            plan.unschedulable.push(Note {
                job: job.id,
                reason,
            });
            continue;
        }
        let fit = place(job.backend, n, &fresh, &usage);
        let start = match (&mut head, fit) {
            (None, Some(p)) => Some(p),
            (None, None) => {
                let free = free_places(job.backend, &fresh, &usage);
                let slack = match job.backend {
                    Backend::Cpu => slack(n, free, &running),
                    Backend::Cuda => 0,
                };
                head = Some((job.id, slack));
                plan.waiting.push(Note {
                    job: job.id,
                    reason: WaitReason::Capacity {
                        needs: n,
                        free,
                        behind: None,
                    },
                });
                None
            }
            (Some((_, slack)), Some(p)) if n <= *slack => {
                *slack -= n;
                Some(p)
            }
            (Some((head_id, slack)), fit) => {
                let reason = if fit.is_some() {
                    WaitReason::WouldDelay {
                        head: *head_id,
                        needs: n,
                        slack: *slack,
                    }
                } else {
                    WaitReason::Capacity {
                        needs: n,
                        free: free_places(job.backend, &fresh, &usage),
                        behind: Some(*head_id),
                    }
                };
                plan.waiting.push(Note {
                    job: job.id,
                    reason,
                });
                None
            }
        };
        if let Some(placement) = start {
            for w in &placement {
                usage.entry(*w).or_default().add(job.backend, 1);
            }
            running.push(n);
            plan.starts.push(Decision {
                job: job.id,
                generation: job.next_generation(),
                placement,
            });
        }
    }
    plan
}

/// Why `job` cannot run on these workers even when they are empty, if so.
fn unschedulable_reason(job: &Job, n: u32, workers: &[&Worker]) -> Option<WaitReason> {
    let capacity: u32 = workers
        .iter()
        .map(|w| w.capacity_for(job.backend))
        .fold(0, u32::saturating_add);
    match job.backend {
        Backend::Cpu if n > capacity => Some(WaitReason::TooManySlots { needs: n, capacity }),
        Backend::Cuda if !workers.iter().any(|w| w.gpus > 0) => Some(WaitReason::NoGpuWorkers),
        Backend::Cuda if n > capacity => Some(WaitReason::TooManyGpus { needs: n, capacity }),
        _ => None,
    }
}

fn free_places(backend: Backend, workers: &[&Worker], usage: &BTreeMap<WorkerId, Usage>) -> u32 {
    workers
        .iter()
        .map(|w| {
            usage
                .get(&w.id)
                .copied()
                .unwrap_or_default()
                .free_for(w, backend)
        })
        .fold(0, u32::saturating_add)
}

/// Places `n` ranks now (best fit on one worker, else pack by most free), or `None`.
fn place(
    backend: Backend,
    n: u32,
    workers: &[&Worker],
    usage: &BTreeMap<WorkerId, Usage>,
) -> Option<Vec<WorkerId>> {
    let free: Vec<(WorkerId, u32)> = workers
        .iter()
        .map(|w| {
            let used = usage.get(&w.id).copied().unwrap_or_default();
            (w.id, used.free_for(w, backend))
        })
        .filter(|(_, f)| *f > 0)
        .collect();
    if let Some((id, _)) = free
        .iter()
        .filter(|(_, f)| *f >= n)
        .min_by_key(|(id, f)| (*f, *id))
    {
        return Some(vec![*id; n as usize]);
    }
    let mut by_free = free;
    by_free.sort_by_key(|(id, f)| (Reverse(*f), *id));
    let mut placement = Vec::with_capacity(n as usize);
    for (id, f) in by_free {
        let take = f.min(n - placement.len() as u32);
        placement.extend(std::iter::repeat_n(id, take as usize));
        if placement.len() as u32 == n {
            return Some(placement);
        }
    }
    None
}

/// The backfill slack behind a head needing `n` places with `free` free now, given the places
/// each running gang returns: `free + m − n`, where `m` is the least total any set of running
/// gangs returns that lets the head start. Zero when no set suffices.
fn slack(n: u32, free: u32, running: &[u32]) -> u32 {
    let target = n.saturating_sub(free) as usize;
    let total: usize = running.iter().map(|&h| h as usize).sum();
    if target > total {
        return 0;
    }
    // Subset sums reachable with the running gangs (a 0/1 knapsack over their sizes).
    let mut reachable = vec![false; total + 1];
    reachable[0] = true;
    for &h in running {
        let h = h as usize;
        for s in (h..=total).rev() {
            if reachable[s - h] {
                reachable[s] = true;
            }
        }
    }
    let m = (target..=total).find(|&s| reachable[s]).unwrap_or(total);
    (free as usize + m).saturating_sub(n as usize) as u32
}

#[cfg(test)]
mod tests {
    use super::slack;

    #[test]
    fn slack_is_the_overshoot_of_the_smallest_sufficient_set() {
        // Head needs 3, 1 free; gangs of 2 and 1 running: the 2 must end → 1 + 2 - 3 = 0.
        assert_eq!(slack(3, 1, &[2, 1]), 0);
        // Head needs 2, 1 free; a gang of 3 running: 1 + 3 - 2 = 2.
        assert_eq!(slack(2, 1, &[3]), 2);
        // Gangs of 4 and 3; head needs 6 with 1 free: the 3+4 = 7 set → 1 + 7 - 6 = 2.
        assert_eq!(slack(6, 1, &[4, 3]), 2);
        // Nothing can free enough.
        assert_eq!(slack(9, 1, &[2]), 0);
    }
}
