//! The coordinator daemon as a library (`server::run` on a listener bound to port 0): the
//! cluster settings a start is given are applied through the log and kept across restarts,
//! and a worker daemon of another release is refused.

mod common;

use std::path::Path;

use convoy_coordinator::server::{ClusterSettings, ServerConfig, run};
use convoy_coordinator::{ClusterConfig, SledLog, recover};
use convoy_proto::v1 as pb;
use tokio::sync::oneshot;

/// Serves `config` until `body` is done with the coordinator's address, then shuts down.
async fn with_server<F, Fut>(config: ServerConfig, body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(run(listener, config, async {
        let _ = stopped.await;
    }));
    body(addr).await;
    let _ = stop.send(());
    server.await.expect("server task").expect("clean shutdown");
}

/// The cluster settings stored in the data directory, as a restart recovers them.
fn stored(dir: &Path) -> ClusterConfig {
    let log = SledLog::open(&dir.join("log")).expect("open the log");
    recover(&log, ClusterConfig::default())
        .expect("recover")
        .0
        .config
}

#[tokio::test]
async fn given_cluster_settings_replace_the_stored_ones_and_others_keep_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let start = |heartbeat_timeout, auto_cordon_after| {
        let mut c = ServerConfig::new(dir.path());
        c.cluster = ClusterSettings {
            heartbeat_timeout,
            auto_cordon_after,
        };
        c
    };
    let defaults = ClusterConfig::default();

    with_server(start(Some(2_000), None), |_| async {}).await;
    let s = stored(dir.path());
    assert_eq!(
        (s.heartbeat_timeout, s.restart_delay, s.auto_cordon_after),
        (2_000, 2_000, defaults.auto_cordon_after)
    );
    // Nothing given: the stored values stay (the defaults do not creep back in).
    with_server(start(None, None), |_| async {}).await;
    assert_eq!(stored(dir.path()).heartbeat_timeout, 2_000);
    // A given value replaces the stored one, the other keeps its stored value.
    with_server(start(None, Some(0)), |_| async {}).await;
    let s = stored(dir.path());
    assert_eq!((s.heartbeat_timeout, s.auto_cordon_after), (2_000, 0));
}

#[tokio::test]
async fn a_worker_of_another_release_is_refused_and_one_of_this_release_registers() {
    let dir = tempfile::tempdir().expect("temp dir");
    with_server(ServerConfig::new(dir.path()), |addr| async move {
        let channel = convoy_client::connect(&addr).await.expect("connect");
        let mut api = convoy_client::worker_api(channel);
        let register = |version: &str| pb::RegisterRequest {
            name: "w".into(),
            cpu_slots: 1,
            gpus: 0,
            version: version.into(),
            running: vec![],
            instance: "i".into(),
        };
        let e = api
            .register(register("0.0.1"))
            .await
            .expect_err("another release");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("0.0.1"), "{}", e.message());
        let e = api.register(register("")).await.expect_err("no version");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        let ok = api
            .register(register(convoy_service::VERSION))
            .await
            .expect("this release")
            .into_inner();
        assert_eq!(ok.worker_id, "worker-1");
    })
    .await;
}

/// A records store that holds a job the command log never issued means the log was lost or
/// replaced: the coordinator refuses to start rather than hand that job's id out again.
#[tokio::test]
async fn a_store_holding_a_job_the_log_never_issued_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let records = convoy_coordinator::server::records::Records::open(
            &dir.path().join("records"),
            10,
            10,
            convoy_coordinator::server::FailStop::returning(),
        )
        .expect("records");
        records
            .append_log(convoy_coordinator::JobId(7), b"a line")
            .expect("append");
    }
    // sled releases a dropped database's lock from a background thread, shortly after.
    let mut msg = String::new();
    for _ in 0..200 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        msg = run(listener, ServerConfig::new(dir.path()), async {})
            .await
            .expect_err("refused")
            .to_string();
        if !msg.contains("could not acquire lock") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        msg.contains("records") && msg.contains("job-7") && msg.contains("issued only 0"),
        "{msg}"
    );
}

/// Log lines a worker ships are kept only for jobs the cluster holds and only on the ranks'
/// own streams (a rank cannot pass for convoy's job events), each cut to a bound.
#[tokio::test]
async fn shipped_log_lines_are_kept_only_for_known_jobs_and_cut_to_a_bound() {
    use convoy_coordinator::server::MAX_LOG_LINE;
    let dir = tempfile::tempdir().expect("temp dir");
    with_server(ServerConfig::new(dir.path()), |addr| async move {
        let channel = convoy_client::connect(&addr).await.expect("connect");
        let mut client = pb::convoy_client::ConvoyClient::new(channel.clone());
        let job = client
            .submit_job(pb::SubmitJobRequest {
                spec_toml: convoy_testkit::specs::mlp_text("logs", 1, "cpu"),
                ..Default::default()
            })
            .await
            .expect("submit")
            .into_inner()
            .job_id;
        let mut api = convoy_client::worker_api(channel);
        let line = |job: &str, stream: &str, text: String| pb::RankLog {
            job_id: job.into(),
            generation: 1,
            rank: 0,
            stream: stream.into(),
            text,
            at_ms: 1,
        };
        api.ship_logs(tokio_stream::iter(vec![
            line(&job, "stdout", "hello".into()),
            line(&job, "stderr", "x".repeat(MAX_LOG_LINE + 100)),
            line("job-99", "stdout", "for no job".into()),
        ]))
        .await
        .expect("shipped");
        let e = api
            .ship_logs(tokio_stream::iter(vec![line(
                &job,
                "convoy",
                "checkpoint step 3000 saved".into(),
            )]))
            .await
            .expect_err("a forged job event");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        let mut stream = client
            .stream_logs(pb::StreamLogsRequest {
                job_id: job.clone(),
                ..Default::default()
            })
            .await
            .expect("logs")
            .into_inner();
        let mut lines = vec![];
        while let Some(l) = stream.message().await.expect("a log line") {
            lines.push(l);
        }
        let texts: Vec<&str> = lines
            .iter()
            .filter(|l| l.stream != "convoy")
            .map(|l| l.text.as_str())
            .collect();
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert_eq!(texts[0], "hello");
        assert!(
            texts[1].ends_with("(100 more bytes cut)"),
            "{}",
            texts[1].len()
        );
        assert!(!lines.iter().any(|l| l.text.contains("step 3000")));
    })
    .await;
    let records = common::files::reopen(|| {
        convoy_coordinator::server::records::Records::open(
            &dir.path().join("records"),
            10,
            10,
            convoy_coordinator::server::FailStop::returning(),
        )
    });
    let (lines, _) = records
        .read_logs(convoy_coordinator::JobId(99), 0, 10)
        .expect("read");
    assert!(lines.is_empty(), "lines kept for a job that does not exist");
}
