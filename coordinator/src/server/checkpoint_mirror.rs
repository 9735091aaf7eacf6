//! Checkpoints on a quorum: as a rank uploads a part to the leader, every message is copied to
//! the other replicas (`RaftPeer.PutCheckpointPart`), and the leader stores the part as
//! committed-worthy only once a majority holds it durably — its own copy and enough of the
//! others'. A committed checkpoint then survives the loss of any one replica, and whichever
//! replica leads next holds it (unless it was the one copy that failed, see ARCHITECTURE.md).

use std::time::Duration;

use convoy_client::Channel;
use convoy_proto::v1::raft_peer_client::RaftPeerClient;
use convoy_proto::v1::{CheckpointUpload, UploadCheckpointResponse};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Response, Status};

use crate::replication::{Membership, secret_header};

/// Messages queued for one replica's copy.
const QUEUE: usize = 16;
/// A replica that cannot take the next message for this long is left behind: waiting for it
/// would hold the rank's upload back.
const STALL: Duration = Duration::from_secs(10);
/// How long a replica may take to confirm its copy once the part has been sent.
const CONFIRM: Duration = Duration::from_secs(30);

/// The other replicas, and how many of their copies make a majority with the leader's.
pub(crate) struct MirrorTargets {
    peers: Vec<(u64, RaftPeerClient<Channel>)>,
    secret: (&'static str, MetadataValue<Ascii>),
    needed: usize,
}

impl MirrorTargets {
    pub fn new(members: &Membership) -> Option<MirrorTargets> {
        let secret = secret_header(members)?;
        let mut peers = vec![];
        for (id, url) in &members.peers {
            let channel = convoy_client::connect_lazy(url).ok()?;
            peers.push((*id, RaftPeerClient::new(channel)));
        }
        // A majority of all the members is members / 2 + 1: the leader and this many others.
        let members = peers.len() + 1;
        let needed = members / 2;
        Some(MirrorTargets {
            peers,
            secret,
            needed,
        })
    }

    /// The other replicas' peer clients.
    pub fn peers(&self) -> impl Iterator<Item = (u64, RaftPeerClient<Channel>)> + '_ {
        self.peers.iter().map(|(id, c)| (*id, c.clone()))
    }

    /// `message` as a request presenting the cluster's secret.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.metadata_mut()
            .insert(self.secret.0, self.secret.1.clone());
        r
    }

    /// Starts one copy of a part per replica.
    pub fn open(&self) -> Mirror {
        let copies = self
            .peers
            .iter()
            .map(|(id, client)| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let request = self.request(ReceiverStream::new(rx));
                let mut client = client.clone();
                let call = tokio::spawn(async move { client.put_checkpoint_part(request).await });
                Copy {
                    node: *id,
                    tx: Some(tx),
                    call,
                }
            })
            .collect();
        Mirror {
            copies,
            needed: self.needed,
        }
    }
}

struct Copy {
    node: u64,
    /// `None` once the replica fell behind or failed.
    tx: Option<mpsc::Sender<CheckpointUpload>>,
    call: JoinHandle<Result<Response<UploadCheckpointResponse>, Status>>,
}

/// The copies of one part in flight.
pub(crate) struct Mirror {
    copies: Vec<Copy>,
    needed: usize,
}

impl Mirror {
    /// Sends `msg` to every copy still keeping up.
    pub async fn send(&mut self, msg: &CheckpointUpload) {
        for c in &mut self.copies {
            if let Some(tx) = &c.tx
                && !matches!(
                    tokio::time::timeout(STALL, tx.send(msg.clone())).await,
                    Ok(Ok(()))
                )
            {
                c.tx = None;
            }
        }
    }

    /// Ends the copies and waits for their answers: `Ok` once a majority (with the leader's
    /// own copy) holds the part, else one line saying how many do and why the others do not.
    pub async fn finish(self) -> Result<(), Status> {
        let total = self.copies.len() + 1;
        let mut stored = 0;
        let mut failures = vec![];
        for c in self.copies {
            let kept = c.tx.is_some();
            drop(c.tx);
            match tokio::time::timeout(CONFIRM, c.call).await {
                Ok(Ok(Ok(_))) if kept => stored += 1,
                Ok(Ok(Ok(_))) => failures.push(format!("replica {} fell behind", c.node)),
                Ok(Ok(Err(s))) => failures.push(format!("replica {}: {}", c.node, s.message())),
                Ok(Err(_)) => failures.push(format!("replica {}: the copy stopped", c.node)),
                Err(_) => failures.push(format!(
                    "replica {}: no answer within {} s",
                    c.node,
                    CONFIRM.as_secs()
                )),
            }
        }
        if stored >= self.needed {
            return Ok(());
        }
        Err(Status::unavailable(format!(
            "the checkpoint part is held by {} of {total} coordinators, and a majority is \
             needed: {}",
            stored + 1,
            failures.join("; ")
        )))
    }
}
