//! Rank 0's step metrics, sent to the coordinator from a thread of its own so a slow or
//! restarting coordinator never slows training.
//!
//! Reports queue in a channel; when the reporter falls behind (a fast job, a coordinator
//! being restarted) it sends, of a backlog, every evaluation and only the newest step
//! metrics, so it catches up instead of replaying stale steps one RPC each. When the
//! coordinator says the attempt is over, the reporter asks the training loop to stop through
//! the [`StopToken`]: the rank then leaves the loop like any other error, closing its ring
//! or aborting its NCCL communicator on the way out, and exits with the superseded status.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use convoy_engine::train::StopToken;
use convoy_proto::v1 as pb;
use convoy_service::RankLaunch;

use crate::client::{RankClient, superseded};

/// Reports queued at most; a full queue drops step metrics (never the last step's).
const QUEUE: usize = 1024;

pub struct Reporter {
    tx: mpsc::SyncSender<pb::StepMetrics>,
    thread: JoinHandle<()>,
}

impl Reporter {
    pub fn spawn(client: Arc<RankClient>, launch: Arc<RankLaunch>, stop: StopToken) -> Reporter {
        let (tx, rx) = mpsc::sync_channel::<pb::StepMetrics>(QUEUE);
        let thread = std::thread::spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                batch.extend(rx.try_iter());
                let newest_step = batch.iter().rposition(|m| m.val_loss.is_none());
                let keep = |(i, m): &(usize, pb::StepMetrics)| {
                    m.val_loss.is_some() || Some(*i) == newest_step
                };
                for (_, m) in batch.into_iter().enumerate().filter(keep) {
                    let req = pb::ProgressReport {
                        job_id: launch.job_id.clone(),
                        generation: launch.generation,
                        rank: launch.rank as u32,
                        metrics: Some(m),
                    };
                    match client.call(|mut api| async move { api.report_progress(req).await }) {
                        Ok(_) => {}
                        Err(s) if superseded(&s) => {
                            stop.stop(format!(
                                "the coordinator no longer runs this attempt ({})",
                                s.message()
                            ));
                            return;
                        }
                        Err(_) => {} // unreachable for now; progress resumes when it is back
                    }
                }
            }
        });
        Reporter { tx, thread }
    }

    /// Queues a report; `must` waits for room (the job's last step must reach the
    /// coordinator), otherwise a full queue drops it.
    pub fn send(&self, metrics: pb::StepMetrics, must: bool) {
        let _ = if must {
            self.tx.send(metrics).map_err(|_| ())
        } else {
            self.tx.try_send(metrics).map_err(|_| ())
        };
    }

    /// Lets the reporter deliver what is queued, waiting at most `limit`: the rank's exit is
    /// never held for long by a coordinator that does not answer.
    pub fn finish(self, limit: std::time::Duration) {
        drop(self.tx);
        let deadline = std::time::Instant::now() + limit;
        while !self.thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
