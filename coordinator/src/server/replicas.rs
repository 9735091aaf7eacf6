//! `convoy.v1.Replicas`: what a member says of itself (role, term, commit and applied
//! indexes, checkpoints held), answered by every member so that `convoy coordinators` can ask
//! each in turn; and, by the leader, handing over leadership and changing the members.

use std::time::Duration;

use convoy_proto::v1::replicas_server::Replicas;
use convoy_proto::v1::{
    ChangeMembersRequest, ReplicaStatus, ReplicaStatusRequest, TransferLeaderRequest,
};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::checkpoints::CheckpointStore;
use crate::replication::MemberOp;
use crate::server::convert;
use crate::server::handle::Handle;
use crate::server::leadership::Leadership;
use crate::server::request::Request as LoopRequest;

/// How long a transfer may take: the new leader must catch up, then win one election.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a membership change may take to commit (a majority must be up).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct ReplicasService {
    pub handle: Handle,
    /// This member's checkpoint store, whose count the status shows.
    pub checkpoints: Option<CheckpointStore>,
}

impl ReplicasService {
    fn status(&self, l: &Leadership) -> ReplicaStatus {
        ReplicaStatus {
            node_id: l.node_id,
            role: l.role.into(),
            leader: l.leader,
            term: l.term,
            commit: l.commit,
            applied: l.applied,
            members: l.member_list.to_string(),
            serving: l.serving,
            checkpoints: self.checkpoints.as_ref().map_or(0, CheckpointStore::count),
        }
    }
}

#[tonic::async_trait]
impl Replicas for ReplicasService {
    async fn status(
        &self,
        _: Request<ReplicaStatusRequest>,
    ) -> Result<Response<ReplicaStatus>, Status> {
        let l = self.handle.leadership.borrow().clone();
        Ok(Response::new(self.status(&l)))
    }

    async fn change_members(
        &self,
        request: Request<ChangeMembersRequest>,
    ) -> Result<Response<ReplicaStatus>, Status> {
        let r = request.into_inner();
        let node = r.node_id;
        let op = if r.address.is_empty() {
            MemberOp::Remove { node }
        } else {
            let address = convoy_client::url(&r.address);
            convoy_client::connect_lazy(&address).map_err(|e| {
                Status::invalid_argument(format!("coordinator {node}'s address: {e}"))
            })?;
            MemberOp::Add { node, address }
        };
        let (applied, done) = oneshot::channel();
        self.handle
            .call(|proposed| LoopRequest::ChangeMembers {
                op,
                proposed,
                applied,
            })
            .await?
            .map_err(Status::failed_precondition)?;
        match tokio::time::timeout(CHANGE_TIMEOUT, done).await {
            Ok(Ok(Ok(()))) => {
                let l = self.handle.leadership.borrow().clone();
                Ok(Response::new(self.status(&l)))
            }
            Ok(Ok(Err(e))) => Err(convert::status(e)),
            Ok(Err(_)) => Err(Status::unavailable(
                "leadership changed before the membership change was applied; whether it \
                 was is unknown (see `convoy coordinators`)",
            )),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "the membership change was proposed but not applied within {} s (is a \
                 majority of the coordinators up?)",
                CHANGE_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<ReplicaStatus>, Status> {
        let to = request.into_inner().to;
        self.handle
            .call(|reply| LoopRequest::TransferLeader { to, reply })
            .await?
            .map_err(Status::failed_precondition)?;
        let mut leadership = self.handle.leadership.clone();
        let moved = tokio::time::timeout(
            TRANSFER_TIMEOUT,
            leadership.wait_for(|l| l.leader == to && l.term > 0),
        )
        .await;
        match moved {
            Ok(Ok(l)) => {
                let l = l.clone();
                Ok(Response::new(self.status(&l)))
            }
            _ => Err(Status::deadline_exceeded(format!(
                "coordinator {to} did not take over within {} s (is it up and caught up?)",
                TRANSFER_TIMEOUT.as_secs()
            ))),
        }
    }
}
