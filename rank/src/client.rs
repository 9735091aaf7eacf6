//! The rank's one connection to the coordinator, with the rank's one async runtime.
//!
//! The training loop is synchronous; the calls the rank makes (rendezvous, progress reports,
//! checkpoint transfers) come from three threads: the training thread, rank 0's metrics
//! reporter and the checkpoint uploader. They share this client: one channel (HTTP/2
//! multiplexes their calls), one small multi-threaded runtime that each thread enters with
//! `block_on`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use convoy_client::Channel;
use convoy_proto::v1 as pb;
use convoy_proto::v1::worker_api_client::WorkerApiClient;
use convoy_service::RankLaunch;
use tonic::Code;

use crate::error::RankError;

/// What every rank of an attempt learns from the rendezvous.
pub struct Rendezvous {
    /// Every rank's collective address, index = rank (CPU jobs' TCP ring).
    pub addresses: Vec<String>,
    /// Rank 0's NCCL unique id (CUDA jobs of several ranks; empty otherwise).
    pub nccl_id: Vec<u8>,
}

pub struct RankClient {
    runtime: tokio::runtime::Runtime,
    api: WorkerApiClient<Channel>,
}

impl RankClient {
    /// A client of the coordinator at `addr` that presents `credential` (the rank's own;
    /// empty when the coordinator runs without authentication).
    pub fn connect(addr: &str, credential: &str) -> Result<Arc<RankClient>, RankError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("rank-rpc")
            .enable_all()
            .build()
            .map_err(|e| RankError::Io {
                what: "starting the rank's runtime".into(),
                source: e,
            })?;
        // The channel's background task is spawned on the runtime it is created in.
        let channel = {
            let _entered = runtime.enter();
            convoy_client::connect_lazy(addr)?
        };
        if !credential.is_empty() {
            channel.set_credential(credential)?;
        }
        Ok(Arc::new(RankClient {
            runtime,
            api: convoy_client::worker_api(channel),
        }))
    }

    /// Runs one call (or a stream of them) to completion from a synchronous thread.
    pub fn call<F: Future>(&self, f: impl FnOnce(WorkerApiClient<Channel>) -> F) -> F::Output {
        self.runtime.block_on(f(self.api.clone()))
    }

    /// Publishes this rank's address (and on rank 0 of a CUDA job the NCCL unique id) and
    /// waits for everyone's. Retries while the coordinator is unreachable, up to the
    /// collective timeout: it may be restarting, or its leader may have died while this rank
    /// waited (the call then breaks with a transport error), and the rendezvous table is not
    /// replicated, so the rank publishes again to the next one.
    pub fn rendezvous(
        &self,
        launch: &RankLaunch,
        address: String,
        nccl_id: Vec<u8>,
    ) -> Result<Rendezvous, RankError> {
        let deadline = Instant::now() + launch.collective_timeout();
        // For the job's log: a gang that does not start is seen waiting here.
        println!(
            "rank {} at the rendezvous of the {} ranks of attempt {}",
            launch.rank, launch.world_size, launch.generation
        );
        loop {
            let req = pb::RendezvousRequest {
                job_id: launch.job_id.clone(),
                generation: launch.generation,
                rank: launch.rank as u32,
                address: address.clone(),
                nccl_id: nccl_id.clone(),
            };
            match self.call(|mut api| async move { api.rendezvous(req).await }) {
                Ok(r) => {
                    let r = r.into_inner();
                    return Ok(Rendezvous {
                        addresses: r.addresses,
                        nccl_id: r.nccl_id,
                    });
                }
                Err(s) if s.code() == Code::FailedPrecondition => {
                    return Err(RankError::Superseded(s.message().to_string()));
                }
                Err(s) if convoy_client::submit::is_transient(&s) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(s) => {
                    return Err(RankError::Rpc {
                        what: "rendezvous".into(),
                        status: s.message().to_string(),
                    });
                }
            }
        }
    }
}

/// Whether the coordinator answered that this rank's attempt is no longer the live one.
pub fn superseded(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::FailedPrecondition | Code::NotFound)
}
