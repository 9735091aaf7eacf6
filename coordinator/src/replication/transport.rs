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

/// The metadata key a member's secret travels in.
const SECRET_HEADER: &str = "x-convoy-cluster-secret";
/// Messages queued for one peer before new ones are dropped.
const QUEUE: usize = 1024;

/// Who belongs to the cluster, and how to reach them.
#[derive(Clone, Debug)]
pub struct Membership {
    pub cluster_id: String,
    pub secret: String,
    pub node_id: u64,
    /// Every member but this one: node id → `http://host:port`.
    pub peers: BTreeMap<u64, String>,
    /// The whole member list as given at start, in its canonical form (see `PeerMessage`).
    pub canonical: String,
    /// This replica's storage incarnation (see `PeerMessage.incarnation`).
    pub incarnation: u64,
}

/// What peers send a replica.
#[derive(Debug)]
pub enum Inbound {
    Message(Message),
    /// The peer restarted with an empty log (its incarnation changed).
    LostLog(u64),
}

impl Membership {
    /// Member `node_id` of `members` (node id → `host:port` or URL, this member included).
    pub fn new(
        cluster_id: String,
        secret: String,
        node_id: u64,
        members: &BTreeMap<u64, String>,
    ) -> Membership {
        Membership {
            cluster_id,
            secret,
            node_id,
            peers: members
                .iter()
                .filter(|(id, _)| **id != node_id)
                .map(|(id, a)| (*id, convoy_client::url(a)))
                .collect(),
            canonical: canonical(members),
            incarnation: 0,
        }
    }
}

/// `members` as `id=host:port` joined by commas, in id order.
pub fn canonical(members: &BTreeMap<u64, String>) -> String {
    members
        .iter()
        .map(|(id, a)| format!("{id}={}", convoy_client::url(a)))
        .collect::<Vec<_>>()
        .join(",")
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
        if m.cluster_id != me.cluster_id {
            return Err(Status::permission_denied(format!(
                "a member of cluster {:?}; this is cluster {:?}",
                m.cluster_id, me.cluster_id
            )));
        }
        if !me.peers.contains_key(&m.from) {
            return Err(Status::permission_denied(format!(
                "node {} is not a member of cluster {:?}",
                m.from, me.cluster_id
            )));
        }
        if m.members != me.canonical {
            return Err(Status::failed_precondition(format!(
                "conflicting member lists: node {} was started with --peers {}, node {} with \
                 --peers {}",
                m.from, m.members, me.node_id, me.canonical
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

/// Sends Raft messages to the peers, one background task each.
pub struct Outbox {
    queues: BTreeMap<u64, mpsc::Sender<Message>>,
}

impl Outbox {
    /// Starts the per-peer tasks on the current tokio runtime.
    pub fn start(members: Arc<Membership>) -> Outbox {
        let mut queues = BTreeMap::new();
        for (&id, url) in &members.peers {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(deliver(members.clone(), url.clone(), rx));
            queues.insert(id, tx);
        }
        Outbox { queues }
    }

    /// Queues `msg` for its peer; dropped if the peer is unknown or its queue is full.
    pub fn send(&self, msg: Message) {
        if let Some(q) = self.queues.get(&msg.to) {
            let _ = q.try_send(msg);
        }
    }
}

/// Keeps a stream to one peer open and feeds it, reconnecting after a failure.
async fn deliver(members: Arc<Membership>, url: String, mut rx: mpsc::Receiver<Message>) {
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
            let m = PeerMessage {
                from: members.node_id,
                cluster_id: members.cluster_id.clone(),
                raft,
                members: members.canonical.clone(),
                incarnation: members.incarnation,
            };
            if tx.send(m).await.is_err() {
                break; // the stream ended: reconnect
            }
            backoff = Duration::from_millis(50);
        }
        if let Ok(Ok(Err(status))) = tokio::time::timeout(Duration::from_millis(100), call).await {
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
