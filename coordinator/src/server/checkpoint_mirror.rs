//! Checkpoints on a quorum: as a rank uploads a part to the leader, every message is copied to
//! the other replicas (`RaftPeer.PutCheckpointPart`), and the leader stores the part as
//! committed-worthy only once a majority holds it durably — its own copy and enough of the
//! others'. A committed checkpoint then survives the loss of any one replica, and whichever
//! replica leads next holds it (unless it was the one copy that failed, see ARCHITECTURE.md).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
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

/// The other replicas, reached through the members' current addresses.
pub(crate) struct MirrorTargets {
    members: Arc<Membership>,
    secret: (&'static str, MetadataValue<Ascii>),
    /// A client per member, made on first use (a channel connects lazily and reconnects),
    /// with the URL it was made for: a member whose address changed gets a new one.
    clients: Mutex<BTreeMap<u64, (String, RaftPeerClient<Channel>)>>,
}

impl MirrorTargets {
    pub fn new(members: Arc<Membership>) -> Option<MirrorTargets> {
        let secret = secret_header(&members)?;
        Some(MirrorTargets {
            members,
            secret,
            clients: Mutex::default(),
        })
    }

    /// The other members' peer clients, learners included.
    pub fn peers(&self) -> Vec<(u64, RaftPeerClient<Channel>)> {
        let peers = self.members.peers();
        // Inserts and removals only: a panic elsewhere cannot leave the map inconsistent.
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.retain(|id, _| peers.contains_key(id));
        peers
            .into_iter()
            .filter_map(|(id, url)| match clients.get(&id) {
                Some((made_for, c)) if *made_for == url => Some((id, c.clone())),
                _ => {
                    let c = RaftPeerClient::new(convoy_client::connect_lazy(&url).ok()?);
                    clients.insert(id, (url, c.clone()));
                    Some((id, c))
                }
            })
            .collect()
    }

    /// `message` as a request presenting the cluster's secret.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.metadata_mut()
            .insert(self.secret.0, self.secret.1.clone());
        r
    }

    /// Starts one copy of a part per other member. A majority of the voters, the leader
    /// among them, must hold the part: learners get a copy, which does not count.
    pub fn open(&self) -> Mirror {
        let (voters, learners) = {
            let book = self.members.book();
            (book.voters().len(), book.learners.clone())
        };
        let copies = self
            .peers()
            .into_iter()
            .map(|(id, mut client)| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let request = self.request(ReceiverStream::new(rx));
                let call = tokio::spawn(async move { client.put_checkpoint_part(request).await });
                Copy {
                    node: id,
                    votes: !learners.contains(&id),
                    tx: Some(tx),
                    call,
                }
            })
            .collect();
        Mirror {
            copies,
            voters,
            needed: voters / 2,
        }
    }
}

struct Copy {
    node: u64,
    /// A voter's copy counts towards the majority; a learner's does not.
    votes: bool,
    /// `None` once the replica fell behind or failed.
    tx: Option<mpsc::Sender<CheckpointUpload>>,
    call: JoinHandle<Result<Response<UploadCheckpointResponse>, Status>>,
}

/// The copies of one part in flight.
pub(crate) struct Mirror {
    copies: Vec<Copy>,
    voters: usize,
    /// Voters' copies needed besides the leader's own.
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
        let total = self.voters;
        let mut stored = 0;
        let mut failures = vec![];
        for c in self.copies {
            let kept = c.tx.is_some();
            drop(c.tx);
            match tokio::time::timeout(CONFIRM, c.call).await {
                Ok(Ok(Ok(_))) if kept => stored += usize::from(c.votes),
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
            "the checkpoint part is held by {} of {total} voting coordinators, and a \
             majority is needed: {}",
            stored + 1,
            failures.join("; ")
        )))
    }
}
