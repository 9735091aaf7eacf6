//! `convoy.v1.Replicas`: what a member says of itself (role, term, commit and applied
//! indexes), answered by every member so that `convoy coordinators` can ask each in turn.

use convoy_proto::v1::replicas_server::Replicas;
use convoy_proto::v1::{ReplicaStatus, ReplicaStatusRequest};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::server::leadership::Leadership;

pub struct ReplicasService {
    pub leadership: watch::Receiver<Leadership>,
}

#[tonic::async_trait]
impl Replicas for ReplicasService {
    async fn status(
        &self,
        _: Request<ReplicaStatusRequest>,
    ) -> Result<Response<ReplicaStatus>, Status> {
        let l = self.leadership.borrow().clone();
        Ok(Response::new(ReplicaStatus {
            node_id: l.node_id,
            role: l.role.into(),
            leader: l.leader,
            term: l.term,
            commit: l.commit,
            applied: l.applied,
            members: l.member_list,
            serving: l.serving,
        }))
    }
}
