//! Ships ranks' output lines to the coordinator in batches.
//!
//! Lines queue here while the coordinator is unreachable (up to a bound; the oldest go first)
//! and are sent when it is back. A `Flush` is answered once every line queued before it has
//! been accepted, which is how a rank's exit report waits for its log.

use std::collections::VecDeque;
use std::time::Duration;

use convoy_client::Channel;
use convoy_proto::v1 as pb;
use convoy_proto::v1::worker_api_client::WorkerApiClient;
use tokio::sync::{mpsc, oneshot};

/// Lines kept while the coordinator cannot be reached.
const MAX_QUEUED: usize = 50_000;
/// Lines per ShipLogs call.
const BATCH: usize = 1_000;

pub enum LogMsg {
    Line(pb::RankLog),
    Flush(oneshot::Sender<()>),
}

pub async fn run(mut rx: mpsc::Receiver<LogMsg>, client: WorkerApiClient<Channel>) {
    let mut queue: VecDeque<pb::RankLog> = VecDeque::new();
    let mut flushes: Vec<oneshot::Sender<()>> = vec![];
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut dropped = 0u64;
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(LogMsg::Line(l)) => {
                    if queue.len() == MAX_QUEUED {
                        queue.pop_front();
                        dropped += 1;
                    }
                    queue.push_back(l);
                    if queue.len() < BATCH {
                        continue;
                    }
                }
                Some(LogMsg::Flush(done)) => flushes.push(done),
                None => return,
            },
            _ = tick.tick() => {}
        }
        if dropped > 0 {
            tracing::warn!("dropped {dropped} log lines while the coordinator was unreachable");
            dropped = 0;
        }
        while !queue.is_empty() {
            let n = queue.len().min(BATCH);
            let batch: Vec<pb::RankLog> = queue.iter().take(n).cloned().collect();
            let mut c = client.clone();
            let call = c.ship_logs(tokio_stream::iter(batch));
            match tokio::time::timeout(Duration::from_secs(10), call).await {
                Ok(Ok(_)) => {
                    queue.drain(..n);
                }
                Ok(Err(e)) => {
                    tracing::debug!("shipping logs: {}", e.message());
                    break;
                }
                Err(_) => {
                    tracing::debug!("shipping logs: no answer within 10 s");
                    break;
                }
            }
        }
        if queue.is_empty() {
            for f in flushes.drain(..) {
                let _ = f.send(());
            }
        }
    }
}
