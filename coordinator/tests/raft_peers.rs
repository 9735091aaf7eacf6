//! Replicas talking over the real peer transport on 127.0.0.1: three elect a leader and
//! replicate a proposal; a stranger is refused before its Raft bytes are decoded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use convoy_coordinator::replication::{
    AddressBook, Inbound, Membership, Outbox, PeerService, RaftStorage, Replica, canonical,
};
use convoy_proto::v1::PeerMessage;
use convoy_proto::v1::raft_peer_client::RaftPeerClient;
use convoy_proto::v1::raft_peer_server::RaftPeerServer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;

/// What a running replica shows the test.
#[derive(Default)]
struct Seen {
    leader: bool,
    committed: Vec<Vec<u8>>,
}

/// Serves `members`' peer service on `listener` and drives a replica on `dir` every 20 ms.
fn start(
    members: Membership,
    listener: TcpListener,
    dir: &std::path::Path,
) -> (Arc<Mutex<Seen>>, mpsc::Sender<Vec<u8>>) {
    let members = Arc::new(members);
    let (inbox_tx, mut inbox) = mpsc::channel::<Inbound>(4096);
    let service = PeerService::new(members.clone(), inbox_tx);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RaftPeerServer::new(service))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let db = sled::open(dir).expect("sled");
    let voters = members.book().voters();
    let mut replica = Replica::new(
        members.node_id,
        &voters,
        RaftStorage::open(&db).expect("storage"),
    )
    .expect("replica");
    let mut outbox = Outbox::start(members);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (propose_tx, mut proposals) = mpsc::channel::<Vec<u8>>(16);
    let shown = seen.clone();
    tokio::spawn(async move {
        let _db = db;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                _ = tick.tick() => replica.tick(),
                Some(m) = inbox.recv() => match m {
                    Inbound::Message(m) => { let _ = replica.step(m); }
                    Inbound::LostLog(id) => replica.peer_lost_log(id),
                    Inbound::NotAMember { .. } => {}
                },
                Some(p) = proposals.recv() => { let _ = replica.propose(p); }
            }
            let out = replica.ready().expect("ready");
            for m in out.messages {
                outbox.send(m);
            }
            let mut s = shown.lock().expect("lock");
            s.leader = replica.is_leader();
            s.committed
                .extend(out.committed.into_iter().map(|(_, d)| d));
        }
    });
    (seen, propose_tx)
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn membership(node_id: u64, addrs: &BTreeMap<u64, String>) -> Membership {
    Membership::new(
        "test-cluster".into(),
        "s3cret".into(),
        node_id,
        1,
        AddressBook::founding(addrs),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_elect_a_leader_and_replicate_over_grpc() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut listeners = BTreeMap::new();
    let mut addrs = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        addrs.insert(id, l.local_addr().expect("addr").to_string());
        listeners.insert(id, l);
    }
    let mut nodes = BTreeMap::new();
    for (id, l) in listeners {
        let node_dir = dir.path().join(format!("node-{id}"));
        nodes.insert(id, start(membership(id, &addrs), l, &node_dir));
    }
    let leader = || {
        nodes
            .iter()
            .find(|(_, (seen, _))| seen.lock().expect("lock").leader)
            .map(|(id, _)| *id)
    };
    wait_for("a leader", || leader().is_some()).await;
    let id = leader().expect("a leader");
    nodes[&id].1.send(b"hello".to_vec()).await.expect("propose");
    wait_for("the proposal on every replica", || {
        nodes.values().all(|(seen, _)| {
            seen.lock()
                .expect("lock")
                .committed
                .iter()
                .any(|d| d == b"hello")
        })
    })
    .await;
}

#[tokio::test]
async fn a_stranger_is_refused_before_its_raft_bytes_are_decoded() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = format!("http://{}", listener.local_addr().expect("addr"));
    let list: BTreeMap<u64, String> = [(1, addr.clone()), (2, "127.0.0.1:1".to_string())]
        .into_iter()
        .collect();
    let members = Arc::new(membership(1, &list));
    let agreed = canonical(&list);
    let (inbox, _rx) = mpsc::channel(16);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RaftPeerServer::new(PeerService::new(members, inbox)))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let send = |secret: &'static str, m: PeerMessage| {
        let addr = addr.clone();
        async move {
            let channel = convoy_client::connect(&addr).await.expect("connect");
            let mut req = tonic::Request::new(tokio_stream::iter(vec![m]));
            req.metadata_mut()
                .insert("x-convoy-cluster-secret", secret.parse().expect("ascii"));
            RaftPeerClient::new(channel).send(req).await
        }
    };
    let msg = |from: u64, cluster: &str, raft: Vec<u8>| PeerMessage {
        from,
        cluster_id: cluster.into(),
        raft,
        members: agreed.clone(),
        incarnation: 1,
        membership_index: 0,
    };
    // Deeply nested protobuf, as the advisory's crash input is: never reaches the decoder.
    let bomb = vec![0x0a; 1 << 16];
    let e = send("wrong", msg(2, "test-cluster", bomb.clone()))
        .await
        .expect_err("wrong secret");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    let e = send("s3cret", msg(2, "other", bomb.clone()))
        .await
        .expect_err("another cluster");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    let e = send("s3cret", msg(9, "test-cluster", bomb.clone()))
        .await
        .expect_err("not a member");
    assert!(e.message().contains("node 9 is not a member"), "{e}");
    let mut other_list = msg(2, "test-cluster", bomb);
    other_list.members = "1=http://127.0.0.1:5,2=http://127.0.0.1:1".into();
    let e = send("s3cret", other_list)
        .await
        .expect_err("another member list");
    assert!(
        e.message().starts_with(
            "conflicting member lists: node 2 was started with --peers 1=http://127.0.0.1:5,"
        ),
        "{e}"
    );
    let e = send("s3cret", msg(2, "test-cluster", vec![0xff, 0xff]))
        .await
        .expect_err("garbage from a member");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
}
