//! `convoy.v1.Replicas`: what a member says of itself (role, term, commit and applied
//! indexes), answered by every member so that `convoy coordinators` can ask each in turn, and
//! the leader's handing over of leadership.

use std::time::Duration;

use convoy_proto::v1::replicas_server::Replicas;
use convoy_proto::v1::{ReplicaStatus, ReplicaStatusRequest, TransferLeaderRequest};
use tonic::{Request, Response, Status};

use crate::server::handle::Handle;
use crate::server::leadership::Leadership;
use crate::server::request::Request as LoopRequest;

/// How long a transfer may take: the new leader must catch up, then win one election.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct ReplicasService {
    pub handle: Handle,
}

fn status(l: &Leadership) -> ReplicaStatus {
    ReplicaStatus {
        node_id: l.node_id,
        role: l.role.into(),
        leader: l.leader,
        term: l.term,
        commit: l.commit,
        applied: l.applied,
        members: l.member_list.to_string(),
        serving: l.serving,
    }
}

#[tonic::async_trait]
impl Replicas for ReplicasService {
    async fn status(
        &self,
        _: Request<ReplicaStatusRequest>,
    ) -> Result<Response<ReplicaStatus>, Status> {
        Ok(Response::new(status(&self.handle.leadership.borrow())))
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
            Ok(Ok(l)) => Ok(Response::new(status(&l))),
            _ => Err(Status::deadline_exceeded(format!(
                "coordinator {to} did not take over within {} s (is it up and caught up?)",
                TRANSFER_TIMEOUT.as_secs()
            ))),
        }
    }
}
