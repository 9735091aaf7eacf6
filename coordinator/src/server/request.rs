//! The event loop's vocabulary: what handlers send it ([`Request`]) and get back, the key of
//! one rank of one attempt, and the [`View`] reads run on. Handlers, the loop, the rendezvous
//! and the checkpoint transfers all speak it; it depends on none of them.

use std::collections::HashMap;

use convoy_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};

use crate::error::ApplyError;
use crate::identity::ApiToken;
use crate::log::codec::RecordOp;
use crate::model::{JobId, RankExit, WorkerId};
use crate::scheduler::WaitReason;
use crate::state::{ClusterState, SubmitJob};

/// What every rank of an attempt receives from the rendezvous.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// Index = rank.
    pub addresses: Vec<String>,
    pub nccl_id: Vec<u8>,
}

/// A rank of one attempt, as workers report what they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RankKey {
    pub job: JobId,
    pub generation: u64,
    pub rank: usize,
}

pub type Reply<T> = oneshot::Sender<T>;

/// What a handler may read: the state and the loop's volatile knowledge.
pub struct View<'a> {
    pub state: &'a ClusterState,
    /// The latest metrics rank 0 reported, per job (not logged; lost on restart).
    pub latest: &'a HashMap<JobId, pb::StepMetrics>,
    /// Why each queued job waits, from the last scheduler run.
    pub waiting: &'a HashMap<JobId, WaitReason>,
}

/// A request from a handler. Commands are logged; reads and rendezvous are not.
pub enum Request {
    Submit {
        submit: SubmitJob,
        reply: Reply<Result<JobId, ApplyError>>,
    },
    Cancel {
        job: JobId,
        reply: Reply<Result<(), ApplyError>>,
    },
    Delete {
        job: JobId,
        reply: Reply<Result<(), ApplyError>>,
    },
    Resume {
        job: JobId,
        reply: Reply<Result<(), ApplyError>>,
    },
    SetCordon {
        worker: WorkerId,
        cordoned: bool,
        reply: Reply<Result<(), ApplyError>>,
    },
    /// Answered with the worker's id and its credential.
    Register {
        name: String,
        slots: u32,
        gpus: u32,
        instance: String,
        reply: Reply<Result<(WorkerId, String), ApplyError>>,
    },
    /// The loop stamps `created_at`.
    CreateToken {
        token: ApiToken,
        reply: Reply<Result<(), ApplyError>>,
    },
    RevokeToken {
        id: String,
        reply: Reply<Result<(), ApplyError>>,
    },
    Heartbeat {
        worker: WorkerId,
        running: Vec<RankKey>,
        reply: Reply<Result<(), ApplyError>>,
    },
    Watch {
        worker: WorkerId,
        assignments: mpsc::UnboundedSender<pb::Assignment>,
        reply: Reply<Result<(), ApplyError>>,
    },
    Progress {
        key: RankKey,
        metrics: pb::StepMetrics,
        reply: Reply<Result<(), ApplyError>>,
    },
    RankExit {
        key: RankKey,
        exit: RankExit,
        reply: Reply<Result<(), ApplyError>>,
    },
    Rendezvous {
        key: RankKey,
        address: String,
        nccl_id: Vec<u8>,
        reply: Reply<Result<Published, ApplyError>>,
    },
    Read(Box<dyn FnOnce(&View<'_>) + Send>),
    /// A read of this replica's state whether it leads or not.
    ReadLocal(Box<dyn FnOnce(&View<'_>) + Send>),
    /// Records to replicate with the next proposal (replicated coordinators only: one alone
    /// writes them directly); the reply comes once they are committed.
    Records {
        ops: Vec<RecordOp>,
        reply: Reply<Result<(), ApplyError>>,
    },
    /// Hand leadership to replica `to`.
    TransferLeader {
        to: u64,
        reply: Reply<Result<(), String>>,
    },
    /// Add, promote or remove a member: `proposed` says at once whether the change was
    /// proposed (or why not), `applied` answers once it is applied here.
    ChangeMembers {
        op: crate::replication::MemberOp,
        proposed: Reply<Result<(), String>>,
        applied: Reply<Result<(), ApplyError>>,
    },
    /// From a peer (replicated coordinators only).
    Peer(crate::replication::Inbound),
    /// The coordinator is stopping: judge no liveness or progress any more, start nothing, and
    /// end the workers' assignment streams. Workers and jobs keep running meanwhile, and the
    /// next start gives them a fresh timeout, so a restart costs no attempt.
    Drain,
    /// Finish the batch, write a snapshot and end the loop.
    Shutdown,
}
