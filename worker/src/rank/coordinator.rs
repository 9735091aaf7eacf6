//! A rank's connection to the coordinator: rendezvous, progress reports.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use convoy_proto::v1 as pb;
use convoy_proto::v1::worker_api_client::WorkerApiClient;
use tonic::Code;
use tonic::transport::Channel;

use super::{EXIT_SUPERSEDED, RankEnv};
use crate::error::WorkerError;

/// What every rank of an attempt learns from the rendezvous.
pub(super) struct Rendezvous {
    /// Every rank's collective address, index = rank (CPU jobs' TCP ring).
    pub addresses: Vec<String>,
    /// Rank 0's NCCL unique id (CUDA jobs of several ranks; empty otherwise).
    pub nccl_id: Vec<u8>,
}

/// The coordinator connection of a rank: a small runtime of its own, used from the training
/// thread (rendezvous) and from the metrics thread.
pub(super) struct Coordinator {
    pub runtime: tokio::runtime::Runtime,
    pub client: WorkerApiClient<Channel>,
}

impl Coordinator {
    pub fn connect(url: &str) -> Result<Coordinator, WorkerError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| WorkerError::Io {
                what: "starting the rank's runtime".into(),
                source: e,
            })?;
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| WorkerError::Config(format!("coordinator address {url:?}: {e}")))?
            .connect_timeout(Duration::from_secs(2));
        // The channel's background task is spawned on the runtime it is created in.
        let client = {
            let _entered = runtime.enter();
            WorkerApiClient::new(endpoint.connect_lazy())
        };
        Ok(Coordinator { runtime, client })
    }

    /// Publishes this rank's address (and on rank 0 of a CUDA job the NCCL unique id) and
    /// waits for everyone's. Retries while the coordinator is unreachable (it may be
    /// restarting), up to the collective timeout.
    pub fn rendezvous(
        &mut self,
        env: &RankEnv,
        address: String,
        nccl_id: Vec<u8>,
    ) -> Result<Rendezvous, WorkerError> {
        let deadline = Instant::now() + env.collective_timeout;
        loop {
            let req = pb::RendezvousRequest {
                job_id: env.job_id.clone(),
                generation: env.generation,
                rank: env.rank as u32,
                address: address.clone(),
                nccl_id: nccl_id.clone(),
            };
            let mut client = self.client.clone();
            match self.runtime.block_on(client.rendezvous(req)) {
                Ok(r) => {
                    let r = r.into_inner();
                    return Ok(Rendezvous {
                        addresses: r.addresses,
                        nccl_id: r.nccl_id,
                    });
                }
                Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(s) if s.code() == Code::FailedPrecondition => {
                    return Err(WorkerError::Superseded(s.message().to_string()));
                }
                Err(s) => {
                    return Err(WorkerError::Rpc {
                        what: "rendezvous".into(),
                        status: s.message().to_string(),
                    });
                }
            }
        }
    }
}

/// Sends rank 0's step metrics to the coordinator from a thread of its own, so a slow or
/// restarting coordinator never slows training. Reports queue in a channel; when the
/// reporter falls behind (a fast job, a coordinator being restarted) it sends, of a backlog,
/// every evaluation and only the newest step metrics, so it catches up instead of replaying
/// stale steps one RPC each. When the coordinator says this attempt is over, the rank stops
/// (a zombie must not keep running).
pub(super) fn spawn_reporter(
    coord: Coordinator,
    env: RankEnv,
) -> (
    mpsc::SyncSender<pb::StepMetrics>,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::sync_channel::<pb::StepMetrics>(1024);
    let thread = std::thread::spawn(move || {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            batch.extend(rx.try_iter());
            let newest_step = batch.iter().rposition(|m| m.val_loss.is_none());
            let keep =
                |(i, m): &(usize, pb::StepMetrics)| m.val_loss.is_some() || Some(*i) == newest_step;
            for (_, m) in batch.into_iter().enumerate().filter(keep) {
                let req = pb::ProgressReport {
                    job_id: env.job_id.clone(),
                    generation: env.generation,
                    rank: env.rank as u32,
                    metrics: Some(m),
                };
                let mut client = coord.client.clone();
                match coord.runtime.block_on(client.report_progress(req)) {
                    Ok(_) => {}
                    Err(s)
                        if s.code() == Code::FailedPrecondition || s.code() == Code::NotFound =>
                    {
                        eprintln!(
                            "stopping: the coordinator no longer runs this attempt ({})",
                            s.message()
                        );
                        std::process::exit(EXIT_SUPERSEDED);
                    }
                    Err(_) => {} // unreachable for now; progress resumes when it is back
                }
            }
        }
    });
    (tx, thread)
}
