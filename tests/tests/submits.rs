//! Idempotent submits on a real coordinator: many clients submit concurrently, the coordinator
//! is SIGKILLed and restarted in the middle, and the clients retry with their request ids.
//! Every acknowledged job exists once; no retry created a second one.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use convoy_proto::v1::{ListJobsRequest, SubmitJobRequest};
use convoy_testkit::cluster::Cluster;
use convoy_testkit::serial;
use convoy_testkit::specs::digits as digits_spec;

const CLIENTS: usize = 16;
const PER_CLIENT: usize = 40;

#[test]
fn concurrent_submits_across_a_sigkill_are_neither_lost_nor_duplicated() {
    let _g = serial();
    let mut c = Cluster::start(5_000);
    let spec_path = digits_spec(c.dir.path(), "many", 100, 1);
    let spec = std::fs::read_to_string(&spec_path).expect("spec");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let acked = Arc::new(AtomicUsize::new(0));
    convoy_client::tls::configure(&convoy_client::tls::TlsSettings {
        ca: Some(c.tls_file("ca.pem").into()),
        identity: None,
    })
    .expect("trust the cluster's CA");
    let channel = runtime
        .block_on(async { convoy_client::connect_lazy(&c.addr) })
        .expect("a channel");
    channel
        .set_credential(&c.admin_token())
        .expect("a valid token");
    // Half the clients pause half-way until the coordinator was restarted, so submissions
    // certainly span the restart; the other half keep submitting through the kill.
    let (restarted_tx, restarted) = tokio::sync::watch::channel(false);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let client = convoy_client::client_api(channel.clone());
            let (spec, acked) = (spec.clone(), acked.clone());
            let mut restarted = restarted.clone();
            runtime.spawn(async move {
                let mut ids = vec![];
                for i in 0..PER_CLIENT {
                    if n % 2 == 0 && i == PER_CLIENT / 2 {
                        let _ = restarted.wait_for(|r| *r).await;
                    }
                    let mut client = client.clone();
                    let request = SubmitJobRequest {
                        spec_toml: spec.clone(),
                        ..Default::default()
                    };
                    let id = convoy_client::submit::submit_with_retry(
                        &mut client,
                        request,
                        Duration::from_secs(120),
                        |_, _| {},
                    )
                    .await?;
                    acked.fetch_add(1, Ordering::Relaxed);
                    ids.push(id);
                }
                Ok::<_, tonic::Status>(ids)
            })
        })
        .collect();
    // The pausing clients are all half-way (the others anywhere): kill it.
    c.wait_for(
        "the first half of the pausing clients' submissions",
        Duration::from_secs(120),
        || acked.load(Ordering::Relaxed) >= CLIENTS / 2 * PER_CLIENT / 2,
    );
    c.kill_coordinator();
    c.restart_coordinator();
    restarted_tx.send_replace(true);
    let mut acknowledged = vec![];
    for t in clients {
        let ids = runtime
            .block_on(t)
            .expect("a client task")
            .expect("every submission is acknowledged in the end");
        acknowledged.extend(ids);
    }
    let distinct: BTreeSet<&String> = acknowledged.iter().collect();
    assert_eq!(
        distinct.len(),
        CLIENTS * PER_CLIENT,
        "two requests got one job"
    );
    let listed = runtime
        .block_on(async {
            let mut client = convoy_client::client_api(channel.clone());
            client.list_jobs(ListJobsRequest::default()).await
        })
        .expect("list")
        .into_inner()
        .jobs;
    let listed: BTreeSet<String> = listed.into_iter().map(|j| j.id).collect();
    assert_eq!(
        listed.len(),
        CLIENTS * PER_CLIENT,
        "a retry created a second job (or a job was lost)"
    );
    for id in distinct {
        assert!(listed.contains(id), "{id} was acknowledged and is gone");
    }
}
