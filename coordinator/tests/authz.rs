//! Who may call what, over every RPC of the client, worker and replica APIs of a coordinator
//! that requires authentication (`server::run` on 127.0.0.1, real tonic clients).
//!
//! One table: each row is an RPC aimed at real ids (alice's running job, worker w1 that runs
//! it, its rank's live attempt) and the callers that may make it; every caller is tried on
//! every row. A caller the row allows must get past authentication and authorization (the
//! call may still fail for its own reasons, e.g. cancelling a job twice); any other caller is
//! refused with `UNAUTHENTICATED` (no or a forged token) or `PERMISSION_DENIED`.
//!
//! The forgeries found against the unauthenticated coordinator are rows here: cancelling
//! someone else's job (bob → CancelJob), registering a worker without the join token
//! (alice, w1 → Register), a worker reporting or shipping logs for ranks it does not run
//! (w2 → ReportRankExit, ShipLogs), watching another worker's assignments (w2 →
//! WatchAssignments), uploading or downloading a checkpoint of another job (other rank,
//! bob → UploadCheckpoint, DownloadCheckpoint), and a rank of an ended attempt acting on
//! (stale rank → every worker row).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use convoy_client::Channel;
use convoy_coordinator::identity::AuthConfig;
use convoy_coordinator::server::{ServerConfig, run};
use convoy_proto::v1 as pb;
use convoy_proto::v1::convoy_client::ConvoyClient;
use convoy_proto::v1::replicas_client::ReplicasClient;
use convoy_proto::v1::worker_api_client::WorkerApiClient;
use tokio::sync::oneshot;
use tonic::{Code, Status};

const ADMIN: &str = "bootstrap-admin-token-0123456789";
const JOIN: &str = "cluster-join-token-0123456789ab";
/// Every wait for the coordinator is bounded by this (a hang fails the test, slowly).
const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Nobody,
    Forged,
    Alice,
    Bob,
    /// The bootstrap administrator.
    Admin,
    /// An administrator by API token.
    Carol,
    Join,
    /// The worker running alice's job.
    W1,
    /// Another worker.
    W2,
    /// Rank 0 of alice's job, live attempt.
    Rank,
    /// Rank 0 of alice's job, ended attempt.
    StaleRank,
    /// Rank 0 of bob's job.
    OtherRank,
}

use Who::*;

const EVERYONE: [Who; 12] = [
    Nobody, Forged, Alice, Bob, Admin, Carol, Join, W1, W2, Rank, StaleRank, OtherRank,
];
const USERS: &[Who] = &[Alice, Bob, Admin, Carol];
const ALICE_OR_ADMINS: &[Who] = &[Alice, Admin, Carol];
const ADMINS: &[Who] = &[Admin, Carol];

#[derive(Clone)]
struct Clients {
    client: ConvoyClient<Channel>,
    worker: WorkerApiClient<Channel>,
    replicas: ReplicasClient<Channel>,
}

async fn clients(addr: &str, token: &str) -> Clients {
    let channel = convoy_client::connect(addr).await.expect("connect");
    if !token.is_empty() {
        channel.set_credential(token).expect("a header-safe token");
    }
    Clients {
        client: convoy_client::client_api(channel.clone()),
        worker: convoy_client::worker_api(channel.clone()),
        replicas: ReplicasClient::new(channel),
    }
}

/// The ids the rows aim at.
struct Ids {
    /// Alice's job, running on w1.
    a: String,
    generation: u64,
    w1: String,
    w2: String,
}

type Outcome = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

struct Row {
    rpc: &'static str,
    allowed: &'static [Who],
    call: Box<dyn Fn(Clients, Arc<Ids>) -> Outcome>,
}

macro_rules! row {
    ($rpc:literal, $allowed:expr, |$c:ident, $ids:ident| $body:expr) => {
        Row {
            rpc: $rpc,
            allowed: $allowed,
            call: Box::new(|mut $c: Clients, $ids: Arc<Ids>| {
                Box::pin(async move {
                    let _ = &mut $c;
                    $body.await.map(drop)
                })
            }),
        }
    };
}

fn rank_log(ids: &Ids) -> pb::RankLog {
    pb::RankLog {
        job_id: ids.a.clone(),
        generation: ids.generation,
        rank: 0,
        stream: "stdout".into(),
        text: "a line".into(),
        at_ms: 1,
    }
}

fn rows() -> Vec<Row> {
    vec![
        // The worker API first: these need alice's attempt live.
        row!("Register", &[Join], |c, _ids| c.worker.register(
            pb::RegisterRequest {
                name: "w3".into(),
                cpu_slots: 1,
                version: convoy_service::VERSION.into(),
                instance: "w3-instance".into(),
                ..Default::default()
            }
        )),
        row!("Heartbeat", &[W1], |c, ids| c.worker.heartbeat(
            pb::HeartbeatRequest {
                worker_id: ids.w1.clone(),
                running: vec![],
            }
        )),
        row!("ReportProgress", &[Rank], |c, ids| c
            .worker
            .report_progress(pb::ProgressReport {
                job_id: ids.a.clone(),
                generation: ids.generation,
                rank: 0,
                metrics: Some(pb::StepMetrics {
                    step: 1,
                    ..Default::default()
                }),
            })),
        // Neither a code nor a signal: past authorization it is refused as malformed, so the
        // attempt stays live for the rows after it.
        row!("ReportRankExit", &[W1], |c, ids| c.worker.report_rank_exit(
            pb::RankExit {
                job_id: ids.a.clone(),
                generation: ids.generation,
                rank: 0,
                ..Default::default()
            }
        )),
        row!("ShipLogs", &[W1], |c, ids| c
            .worker
            .ship_logs(tokio_stream::iter(vec![rank_log(&ids)]))),
        row!("Rendezvous", &[Rank], |c, ids| c.worker.rendezvous(
            pb::RendezvousRequest {
                job_id: ids.a.clone(),
                generation: ids.generation,
                rank: 0,
                address: "127.0.0.1:1".into(),
                nccl_id: vec![],
            }
        )),
        row!("UploadCheckpoint", &[Rank], |c, ids| c
            .worker
            .upload_checkpoint(tokio_stream::iter(vec![
                pb::CheckpointUpload {
                    part: Some(pb::CheckpointPart {
                        job_id: ids.a.clone(),
                        generation: ids.generation,
                        step: 1,
                        part: 0,
                        parts: 1,
                        total_len: 0,
                        offset: 0,
                        len: 0,
                        ..Default::default()
                    }),
                    data: vec![],
                    checksum: 0,
                }
            ]))),
        row!("WorkerApi.DownloadCheckpoint", &[Rank], |c, ids| c
            .worker
            .download_checkpoint(pb::DownloadCheckpointRequest {
                job_id: ids.a.clone(),
                step: None,
            })),
        row!("WatchAssignments", &[W1], |c, ids| c
            .worker
            .watch_assignments(pb::WatchAssignmentsRequest {
                worker_id: ids.w1.clone(),
            })),
        // The client API.
        row!("SubmitJob", USERS, |c, _ids| c.client.submit_job(
            pb::SubmitJobRequest {
                spec_toml: convoy_testkit::specs::mlp_text("more", 1, "cpu"),
                ..Default::default()
            }
        )),
        row!("ListJobs", USERS, |c, _ids| c
            .client
            .list_jobs(pb::ListJobsRequest::default())),
        row!("GetJob", USERS, |c, ids| c.client.get_job(
            pb::GetJobRequest {
                job_id: ids.a.clone()
            }
        )),
        row!("ClusterStatus", USERS, |c, _ids| c
            .client
            .cluster_status(pb::ClusterStatusRequest {})),
        row!("WhoAmI", USERS, |c, _ids| c
            .client
            .who_am_i(pb::WhoAmIRequest {})),
        row!("StreamLogs", ALICE_OR_ADMINS, |c, ids| c
            .client
            .stream_logs(pb::StreamLogsRequest {
                job_id: ids.a.clone(),
                rank: None,
                follow: false,
            })),
        row!("StreamMetrics", ALICE_OR_ADMINS, |c, ids| c
            .client
            .stream_metrics(pb::StreamMetricsRequest {
                job_id: ids.a.clone(),
                follow: false,
            })),
        row!("ListCheckpoints", ALICE_OR_ADMINS, |c, ids| c
            .client
            .list_checkpoints(pb::ListCheckpointsRequest {
                job_id: ids.a.clone(),
            })),
        row!("VerifyCheckpoint", ALICE_OR_ADMINS, |c, ids| c
            .client
            .verify_checkpoint(pb::VerifyCheckpointRequest {
                job_id: ids.a.clone(),
                step: None,
            })),
        row!("Convoy.DownloadCheckpoint", ALICE_OR_ADMINS, |c, ids| c
            .client
            .download_checkpoint(pb::DownloadCheckpointRequest {
                job_id: ids.a.clone(),
                step: None,
            })),
        row!("ListWorkers", ADMINS, |c, _ids| c
            .client
            .list_workers(pb::ListWorkersRequest {})),
        row!("SetCordon", ADMINS, |c, ids| c.client.set_cordon(
            pb::SetCordonRequest {
                worker: ids.w2.clone(),
                cordoned: true,
            }
        )),
        row!("CreateToken", ADMINS, |c, _ids| c.client.create_token(
            pb::CreateTokenRequest {
                user: "dave".into(),
                admin: false,
                expires_in_ms: 0,
            }
        )),
        row!("ListTokens", ADMINS, |c, _ids| c
            .client
            .list_tokens(pb::ListTokensRequest {})),
        row!("RevokeToken", ADMINS, |c, _ids| c.client.revoke_token(
            pb::RevokeTokenRequest {
                id: "nosuchtoken".into(),
            }
        )),
        row!("CancelJob", ALICE_OR_ADMINS, |c, ids| c.client.cancel_job(
            pb::CancelJobRequest {
                job_id: ids.a.clone()
            }
        )),
        row!("ResumeJob", ALICE_OR_ADMINS, |c, ids| c.client.resume_job(
            pb::ResumeJobRequest {
                job_id: ids.a.clone()
            }
        )),
        // The replica API: administrators only.
        row!("Replicas.Status", ADMINS, |c, _ids| c
            .replicas
            .status(pb::ReplicaStatusRequest {})),
        row!("Replicas.TransferLeader", ADMINS, |c, _ids| c
            .replicas
            .transfer_leader(pb::TransferLeaderRequest { to: 2 })),
        row!("Replicas.ChangeMembers", ADMINS, |c, _ids| c
            .replicas
            .change_members(pb::ChangeMembersRequest {
                node_id: 2,
                address: String::new(),
            })),
        // Last: it removes alice's job.
        row!("DeleteJob", ALICE_OR_ADMINS, |c, ids| c.client.delete_job(
            pb::DeleteJobRequest {
                job_id: ids.a.clone(),
                keep_checkpoints: false,
            }
        )),
    ]
}

/// Registers a worker with the join token and keeps it heartbeating; its id, credential and
/// assignment stream.
async fn worker(
    addr: &str,
    name: &str,
    slots: u32,
) -> (String, String, tonic::Streaming<pb::Assignment>) {
    let mut join = clients(addr, JOIN).await.worker;
    let reg = join
        .register(pb::RegisterRequest {
            name: name.into(),
            cpu_slots: slots,
            version: convoy_service::VERSION.into(),
            instance: format!("{name}-instance"),
            ..Default::default()
        })
        .await
        .expect("registers with the join token")
        .into_inner();
    assert!(reg.credential.starts_with("cvw."), "{}", reg.credential);
    let mut me = clients(addr, &reg.credential).await.worker;
    let stream = me
        .watch_assignments(pb::WatchAssignmentsRequest {
            worker_id: reg.worker_id.clone(),
        })
        .await
        .expect("watches its own assignments")
        .into_inner();
    let id = reg.worker_id.clone();
    tokio::spawn(async move {
        loop {
            let _ = me
                .heartbeat(pb::HeartbeatRequest {
                    worker_id: id.clone(),
                    running: vec![],
                })
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (reg.worker_id, reg.credential, stream)
}

/// The next rank start on `stream`.
async fn next_start(stream: &mut tonic::Streaming<pb::Assignment>) -> pb::StartRank {
    loop {
        let a = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("an assignment in time")
            .expect("the stream")
            .expect("not ended");
        if let Some(pb::assignment::Kind::Start(s)) = a.kind {
            return s;
        }
    }
}

async fn submit(c: &mut Clients, name: &str) -> String {
    c.client
        .submit_job(pb::SubmitJobRequest {
            spec_toml: convoy_testkit::specs::mlp_text(name, 1, "cpu"),
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner()
        .job_id
}

async fn token(admin: &mut Clients, user: &str, is_admin: bool, expires_in_ms: u64) -> String {
    admin
        .client
        .create_token(pb::CreateTokenRequest {
            user: user.into(),
            admin: is_admin,
            expires_in_ms,
        })
        .await
        .expect("create a token")
        .into_inner()
        .token
}

/// A coordinator that requires authentication, on 127.0.0.1 until [`Secured::stop`].
struct Secured {
    addr: String,
    _dir: tempfile::TempDir,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), convoy_coordinator::server::ServerError>>,
}

impl Secured {
    async fn start(configure: impl FnOnce(&mut ServerConfig)) -> Secured {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = ServerConfig::new(dir.path());
        config.auth = AuthConfig::with_tokens(ADMIN, JOIN).expect("valid tokens");
        configure(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(listener, config, async {
            let _ = stopped.await;
        }));
        Secured {
            addr,
            _dir: dir,
            stop,
            task,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("server task")
            .expect("clean shutdown");
    }
}

fn auth_error(s: &Status) -> bool {
    matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied)
}

#[tokio::test]
async fn every_rpc_admits_exactly_the_callers_that_may_make_it() {
    let server = Secured::start(|_| {}).await;
    let addr = server.addr.clone();

    let mut admin = clients(&addr, ADMIN).await;
    let alice = token(&mut admin, "alice", false, 0).await;
    let bob = token(&mut admin, "bob", false, 0).await;
    let carol = token(&mut admin, "carol", true, 0).await;

    let (w1, w1_credential, mut w1_stream) = worker(&addr, "w1", 2).await;
    let (w2, w2_credential, _w2_stream) = worker(&addr, "w2", 1).await;
    admin
        .client
        .set_cordon(pb::SetCordonRequest {
            worker: w2.clone(),
            cordoned: true,
        })
        .await
        .expect("cordon w2: it runs nothing");

    // Alice's job starts on w1; cancelled and resumed, it runs a second attempt, and the
    // first attempt's credential is stale.
    let a = submit(&mut clients(&addr, &alice).await, "alices").await;
    let first = next_start(&mut w1_stream).await;
    assert_eq!((first.job_id.as_str(), first.generation), (a.as_str(), 1));
    let mut as_alice = clients(&addr, &alice).await;
    as_alice
        .client
        .cancel_job(pb::CancelJobRequest { job_id: a.clone() })
        .await
        .expect("alice cancels her job");
    as_alice
        .client
        .resume_job(pb::ResumeJobRequest { job_id: a.clone() })
        .await
        .expect("alice resumes her job");
    let live = next_start(&mut w1_stream).await;
    assert_eq!((live.job_id.as_str(), live.generation), (a.as_str(), 2));
    // Bob's job runs beside it.
    let b = submit(&mut clients(&addr, &bob).await, "bobs").await;
    let other = next_start(&mut w1_stream).await;
    assert_eq!(other.job_id, b);

    let tokens: BTreeMap<Who, String> = [
        (Nobody, String::new()),
        (Forged, "cvu.0123456789ab.forged".to_string()),
        (Alice, alice),
        (Bob, bob),
        (Admin, ADMIN.to_string()),
        (Carol, carol),
        (Join, JOIN.to_string()),
        (W1, w1_credential),
        (W2, w2_credential),
        (Rank, live.credential.clone()),
        (StaleRank, first.credential.clone()),
        (OtherRank, other.credential.clone()),
    ]
    .into_iter()
    .collect();
    let mut as_who = BTreeMap::new();
    for (who, t) in &tokens {
        as_who.insert(*who, clients(&addr, t).await);
    }
    let ids = Arc::new(Ids {
        a,
        generation: live.generation,
        w1,
        w2,
    });

    let mut wrong = vec![];
    for row in rows() {
        for who in EVERYONE {
            let c = as_who[&who].clone();
            let got = tokio::time::timeout(PATIENCE, (row.call)(c, ids.clone()))
                .await
                .unwrap_or_else(|_| panic!("{} as {who:?} did not answer", row.rpc));
            let allowed = row.allowed.contains(&who);
            match (&got, allowed) {
                (Err(s), true) if auth_error(s) => wrong.push(format!(
                    "{} as {who:?} was refused: {:?} {}",
                    row.rpc,
                    s.code(),
                    s.message()
                )),
                (Ok(()), false) => wrong.push(format!("{} as {who:?} was accepted", row.rpc)),
                (Err(s), false) if !auth_error(s) => wrong.push(format!(
                    "{} as {who:?} got past the checks: {:?} {}",
                    row.rpc,
                    s.code(),
                    s.message()
                )),
                (Err(s), false) => {
                    // One readable line that says why.
                    assert!(!s.message().is_empty() && !s.message().contains('\n'));
                    let want = if matches!(who, Nobody | Forged) {
                        Code::Unauthenticated
                    } else {
                        Code::PermissionDenied
                    };
                    if s.code() != want {
                        wrong.push(format!(
                            "{} as {who:?}: {:?} instead of {want:?}: {}",
                            row.rpc,
                            s.code(),
                            s.message()
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    server.stop().await;
}

#[tokio::test]
async fn expired_and_revoked_tokens_are_refused_with_one_line_naming_them() {
    let server = Secured::start(|_| {}).await;
    let addr = server.addr.clone();
    let mut admin = clients(&addr, ADMIN).await;

    let short = token(&mut admin, "erin", false, 1).await;
    // It expired 1 ms after it was created.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let e = clients(&addr, &short)
        .await
        .client
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect_err("expired");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        e.message().contains("erin") && e.message().contains("expired"),
        "{}",
        e.message()
    );

    let frank = token(&mut admin, "frank", false, 0).await;
    let mut as_frank = clients(&addr, &frank).await;
    let me = as_frank
        .client
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect("a valid token")
        .into_inner();
    assert_eq!((me.user.as_str(), me.admin), ("frank", false));
    admin
        .client
        .revoke_token(pb::RevokeTokenRequest {
            id: me.token_id.clone(),
        })
        .await
        .expect("revoke");
    let e = as_frank
        .client
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect_err("revoked");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        e.message().contains(&me.token_id) && e.message().contains("revoked"),
        "{}",
        e.message()
    );
    // The listing never shows a secret.
    let listed = admin
        .client
        .list_tokens(pb::ListTokensRequest {})
        .await
        .expect("list")
        .into_inner()
        .tokens;
    assert!(listed.iter().all(|t| t.user != "frank"));
    assert!(
        listed
            .iter()
            .any(|t| t.user == "erin" && t.expires_at_ms > 0)
    );

    server.stop().await;
}

/// A user who submits faster than the limit is refused with one line that says so, past a
/// burst; another user and administrators are not held up by it.
#[tokio::test]
async fn a_user_submitting_faster_than_the_limit_is_refused_and_others_are_not() {
    // A burst of 10, refilled at 1 per second: a hundred back-to-back submissions cannot all
    // pass unless they take a minute and a half.
    let server = Secured::start(|c| c.rate_limits.submits_per_second = 1).await;
    let addr = server.addr.clone();
    let mut admin = clients(&addr, ADMIN).await;
    let alice = token(&mut admin, "alice", false, 0).await;
    let bob = token(&mut admin, "bob", false, 0).await;
    let mut as_alice = clients(&addr, &alice).await;
    let mut refused = None;
    let mut accepted = 0;
    for i in 0..100 {
        match as_alice
            .client
            .submit_job(pb::SubmitJobRequest {
                spec_toml: convoy_testkit::specs::mlp_text(&format!("a{i}"), 1, "cpu"),
                ..Default::default()
            })
            .await
        {
            Ok(_) => accepted += 1,
            Err(e) => refused = Some(e),
        }
    }
    let e = refused.expect("alice was limited");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message()
            .contains("alice submits more than 1 jobs per second"),
        "{}",
        e.message()
    );
    assert!((10..100).contains(&accepted), "{accepted}");
    submit(&mut clients(&addr, &bob).await, "bobs").await;
    for i in 0..30 {
        submit(&mut admin, &format!("admins{i}")).await;
    }
    server.stop().await;
}
