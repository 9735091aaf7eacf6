//! The peer transport: Raft messages between coordinator replicas over gRPC (`RaftPeer`).
//!
//! [`PeerService`] receives: a stream is heard only from a configured member presenting the
//! cluster's id and secret, and only then are its Raft bytes decoded (raft 0.7's protobuf
//! decoder has RUSTSEC-2024-0437, a stack overflow on crafted input). [`Outbox`] sends: one
//! task per peer keeps a stream open, reconnecting with backoff, and drops messages when a
//! peer is unreachable or slow — Raft resends what matters, so the transport never blocks the
//! replica.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use convoy_proto::v1::raft_peer_client::RaftPeerClient;
use convoy_proto::v1::raft_peer_server::RaftPeer;
use convoy_proto::v1::{
    CheckpointSteps, CheckpointUpload, FetchCheckpointPartRequest, ListCheckpointStepsRequest,
    PeerAck, PeerMessage, UploadCheckpointResponse,
};
use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::{Request, Response, Status, Streaming};

use super::Membership;

/// The metadata key a member's secret travels in.
const SECRET_HEADER: &str = "x-convoy-cluster-secret";
/// Messages queued for one peer before new ones are dropped.
const QUEUE: usize = 1024;

/// The metadata key of a refusal that says which membership it was judged by.
const MEMBERSHIP_HEADER: &str = "x-convoy-membership-index";

/// What peers send a replica.
#[derive(Debug)]
pub enum Inbound {
    Message(Message),
    /// The peer restarted with an empty log (its incarnation changed).
    LostLog(u64),
    /// The peer refused this replica as not a member, by the members it applied at log
    /// index `at` (see `ReplicatedState::refused_by`).
    NotAMember {
        peer: u64,
        at: u64,
    },
}

/// Compares without an early exit, so the time taken says nothing about the secret.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A part's messages, as a rank's upload sends them.
pub type PartStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<CheckpointUpload, Status>> + Send + 'static>,
>;

/// A replica's checkpoint store as its peers see it: the parts its leader copies to it, and
/// the committed checkpoints a new leader that lacks them fetches from it.
#[tonic::async_trait]
pub trait PartReplica: Send + Sync + 'static {
    async fn put_part(
        &self,
        stream: Streaming<CheckpointUpload>,
    ) -> Result<UploadCheckpointResponse, Status>;
    async fn list_steps(&self, jobs: Vec<String>) -> Result<CheckpointSteps, Status>;
    async fn fetch_part(&self, request: FetchCheckpointPartRequest) -> Result<PartStream, Status>;
}

/// Receives peers' Raft messages into `inbox`, and checkpoint parts into `parts`.
pub struct PeerService {
    members: Arc<Membership>,
    inbox: mpsc::Sender<Inbound>,
    /// Each peer's incarnation as last heard.
    incarnations: std::sync::Mutex<BTreeMap<u64, u64>>,
    parts: Option<Arc<dyn PartReplica>>,
}

impl PeerService {
    pub fn new(members: Arc<Membership>, inbox: mpsc::Sender<Inbound>) -> PeerService {
        PeerService {
            members,
            inbox,
            incarnations: Default::default(),
            parts: None,
        }
    }

    /// Checkpoint parts copied by the leader go to `parts`.
    pub fn with_parts(mut self, parts: Arc<dyn PartReplica>) -> PeerService {
        self.parts = Some(parts);
        self
    }

    fn parts(&self) -> Result<&Arc<dyn PartReplica>, Status> {
        self.parts
            .as_ref()
            .ok_or_else(|| Status::unimplemented("this replica keeps no checkpoints"))
    }

    /// Whether `m`'s sender has a new incarnation since it was last heard.
    fn reborn(&self, m: &PeerMessage) -> bool {
        let mut seen = self.incarnations.lock().unwrap_or_else(|e| e.into_inner());
        seen.insert(m.from, m.incarnation)
            .is_some_and(|old| old != m.incarnation)
    }

    fn authenticate(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let given = metadata
            .get(SECRET_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !same_secret(given, self.members.secret.as_bytes()) {
            return Err(Status::unauthenticated(
                "not a member of this cluster: the peer secret does not match",
            ));
        }
        Ok(())
    }

    /// Checks an authenticated member's message and decodes its Raft bytes.
    fn admit(&self, m: &PeerMessage) -> Result<Message, Status> {
        let me = &self.members;
        let book = me.book();
        if m.cluster_id != me.cluster_id {
            return Err(Status::permission_denied(format!(
                "a member of cluster {:?}; this is cluster {:?}",
                m.cluster_id, me.cluster_id
            )));
        }
        if m.from == me.node_id || !book.contains(m.from) {
            let mut refusal = Status::permission_denied(format!(
                "node {} is not a member of cluster {:?}",
                m.from, me.cluster_id
            ));
            // A removed member that never heard of its removal learns of it from this.
            if let Ok(v) = MetadataValue::try_from(book.changed_at.to_string()) {
                refusal.metadata_mut().insert(MEMBERSHIP_HEADER, v);
            }
            return Err(refusal);
        }
        // Before any membership change both lists are what the members were started with;
        // after one, the log decides and a member behind it catches up.
        let changed_at = book.changed_at;
        drop(book);
        if m.membership_index == 0 && changed_at == 0 && *m.members != *me.canonical() {
            return Err(Status::failed_precondition(format!(
                "conflicting member lists: node {} was started with --peers {}, node {} with \
                 --peers {}",
                m.from,
                m.members,
                me.node_id,
                me.canonical()
            )));
        }
        let msg = Message::parse_from_bytes(&m.raft).map_err(|e| {
            Status::invalid_argument(format!("a Raft message that does not decode: {e}"))
        })?;
        if msg.from != m.from || msg.to != me.node_id {
            return Err(Status::invalid_argument(format!(
                "a Raft message from {} to {} on node {}'s stream to node {}",
                msg.from, msg.to, m.from, me.node_id
            )));
        }
        Ok(msg)
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn send(
        &self,
        request: Request<Streaming<PeerMessage>>,
    ) -> Result<Response<PeerAck>, Status> {
        self.authenticate(request.metadata())?;
        let mut stream = request.into_inner();
        while let Some(m) = stream.message().await? {
            let msg = self.admit(&m)?;
            if self.reborn(&m) && self.inbox.send(Inbound::LostLog(m.from)).await.is_err() {
                return Err(Status::unavailable("this replica is stopping"));
            }
            if self.inbox.send(Inbound::Message(msg)).await.is_err() {
                return Err(Status::unavailable("this replica is stopping"));
            }
        }
        Ok(Response::new(PeerAck {}))
    }

    async fn put_checkpoint_part(
        &self,
        request: Request<Streaming<CheckpointUpload>>,
    ) -> Result<Response<UploadCheckpointResponse>, Status> {
        self.authenticate(request.metadata())?;
        let parts = self.parts()?;
        Ok(Response::new(parts.put_part(request.into_inner()).await?))
    }

    async fn list_checkpoint_steps(
        &self,
        request: Request<ListCheckpointStepsRequest>,
    ) -> Result<Response<CheckpointSteps>, Status> {
        self.authenticate(request.metadata())?;
        let parts = self.parts()?;
        Ok(Response::new(
            parts.list_steps(request.into_inner().job_ids).await?,
        ))
    }

    type FetchCheckpointPartStream = PartStream;

    async fn fetch_checkpoint_part(
        &self,
        request: Request<FetchCheckpointPartRequest>,
    ) -> Result<Response<PartStream>, Status> {
        self.authenticate(request.metadata())?;
        let parts = self.parts()?;
        Ok(Response::new(parts.fetch_part(request.into_inner()).await?))
    }
}

/// The header a peer request presents the cluster's secret in, ready to send; `None` when the
/// secret cannot travel in a header.
pub fn secret_header(members: &Membership) -> Option<(&'static str, MetadataValue<Ascii>)> {
    members
        .secret
        .parse::<MetadataValue<Ascii>>()
        .ok()
        .map(|v| (SECRET_HEADER, v))
}

/// Sends Raft messages to the peers, one background task each, started the first time a
/// member is sent to and replaced when its address changes (membership changes).
pub struct Outbox {
    members: Arc<Membership>,
    runtime: tokio::runtime::Handle,
    /// Where peers' refusals of this replica as a stranger are reported.
    inbox: Option<mpsc::Sender<Inbound>>,
    /// Per peer: the URL its task sends to, and the task's queue.
    queues: BTreeMap<u64, (String, mpsc::Sender<Message>)>,
}

impl Outbox {
    /// An outbox whose tasks run on the current tokio runtime (it may then be used from any
    /// thread).
    pub fn start(members: Arc<Membership>) -> Outbox {
        Outbox {
            members,
            runtime: tokio::runtime::Handle::current(),
            inbox: None,
            queues: BTreeMap::new(),
        }
    }

    /// Reports to `inbox` when a peer refuses this replica as not a member.
    pub fn reporting_to(mut self, inbox: mpsc::Sender<Inbound>) -> Outbox {
        self.inbox = Some(inbox);
        self
    }

    /// Queues `msg` for its peer; dropped if the peer is not a member or its queue is full.
    pub fn send(&mut self, msg: Message) {
        let Some(url) = self
            .members
            .url(msg.to)
            .filter(|_| msg.to != self.members.node_id)
        else {
            // A removed member: dropping its queue ends its task.
            self.queues.remove(&msg.to);
            return;
        };
        let current = self.queues.get(&msg.to).is_some_and(|(u, _)| *u == url);
        if !current {
            let (tx, rx) = mpsc::channel(QUEUE);
            let peer = Peer {
                id: msg.to,
                url: url.clone(),
                inbox: self.inbox.clone(),
            };
            self.runtime.spawn(deliver(self.members.clone(), peer, rx));
            self.queues.insert(msg.to, (url, tx));
        }
        if let Some((_, q)) = self.queues.get(&msg.to) {
            let _ = q.try_send(msg);
        }
    }
}

/// Who [`deliver`] sends to, and where it reports a refusal.
struct Peer {
    id: u64,
    url: String,
    inbox: Option<mpsc::Sender<Inbound>>,
}

/// Keeps a stream to one peer open and feeds it, reconnecting after a failure.
async fn deliver(members: Arc<Membership>, peer: Peer, mut rx: mpsc::Receiver<Message>) {
    let url = peer.url;
    let Ok(secret) = members.secret.parse::<MetadataValue<Ascii>>() else {
        // Sending without it would only be refused by every peer, under a vaguer message.
        tracing::error!(
            "the cluster secret is not valid in a gRPC header (printable ASCII only); nothing \
             is sent to the peer at {url}"
        );
        return;
    };
    let mut backoff = Duration::from_millis(50);
    let mut warned: Option<String> = None;
    loop {
        let Ok(channel) = convoy_client::connect_lazy(&url) else {
            tracing::error!("peer address {url} is not valid");
            return;
        };
        let (tx, stream_rx) = mpsc::channel::<PeerMessage>(QUEUE);
        let mut request = Request::new(ReceiverStream::new(stream_rx));
        request.metadata_mut().insert(SECRET_HEADER, secret.clone());
        let mut client = RaftPeerClient::new(channel);
        let call = tokio::spawn(async move { client.send(request).await });
        loop {
            let Some(msg) = rx.recv().await else {
                call.abort();
                return; // the replica is gone
            };
            let Ok(raft) = msg.write_to_bytes() else {
                continue;
            };
            let membership_index = members.book().changed_at;
            let list = members.canonical().to_string();
            let m = PeerMessage {
                from: members.node_id,
                cluster_id: members.cluster_id.clone(),
                raft,
                members: list,
                incarnation: members.incarnation,
                membership_index,
            };
            if tx.send(m).await.is_err() {
                break; // the stream ended: reconnect
            }
            backoff = Duration::from_millis(50);
        }
        if let Ok(Ok(Err(status))) = tokio::time::timeout(Duration::from_millis(100), call).await {
            let judged_at = status
                .metadata()
                .get(MEMBERSHIP_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if let (Some(at), Some(inbox)) = (judged_at, &peer.inbox) {
                let _ = inbox.send(Inbound::NotAMember { peer: peer.id, at }).await;
            }
            // A refusal is a configuration mistake an operator must see (once, not each retry).
            let refused = !matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
            );
            if refused && warned.as_deref() != Some(status.message()) {
                tracing::error!(
                    "the peer at {url} refuses this member: {}",
                    status.message()
                );
                warned = Some(status.message().to_string());
            } else {
                tracing::debug!("stream to peer at {url} ended: {}", status.message());
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}
