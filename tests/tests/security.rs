//! A secured cluster as its users and operators meet it (real processes, TLS with the
//! cluster's own CA, tokens): who can connect, who can act on what, which machines may join.
//! Every RPC's checks are in `coordinator/tests/authz.rs`; these are the end-to-end paths.

use std::process::Output;
use std::time::Duration;

use convoy_testkit::cluster::Cluster;
use convoy_testkit::serial;
use convoy_testkit::specs::digits as digits_spec;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// One line on stderr and a failing status.
fn refused(out: &Output) -> String {
    assert!(!out.status.success(), "succeeded: {}", stderr(out));
    let e = stderr(out);
    assert_eq!(e.lines().count(), 1, "{e}");
    e
}

#[test]
fn a_client_that_does_not_trust_the_clusters_ca_cannot_talk_to_it() {
    let _g = serial();
    let c = Cluster::start(5_000);
    assert!(c.convoy(&["status"]).status.success());

    // Plaintext to a TLS port.
    let out = std::process::Command::new(convoy_testkit::bin_dir().join("convoy"))
        .args(["status"])
        .env("CONVOY_COORDINATOR", &c.addr)
        .env("CONVOY_TOKEN_FILE", c.admin_token_file())
        .env_remove("CONVOY_TLS_CA")
        .output()
        .expect("run convoy");
    refused(&out);

    // TLS with another cluster's CA: the certificate is not trusted.
    let other = tempfile::tempdir().expect("temp dir");
    let made = convoy_testkit::convoy(&[
        "tls",
        "init",
        "--out",
        other.path().to_str().expect("utf-8"),
    ]);
    assert!(made.status.success(), "{}", stderr(&made));
    let out = std::process::Command::new(convoy_testkit::bin_dir().join("convoy"))
        .args(["status"])
        .env("CONVOY_COORDINATOR", &c.addr)
        .env("CONVOY_TOKEN_FILE", c.admin_token_file())
        .env("CONVOY_TLS_CA", other.path().join("ca.pem"))
        .output()
        .expect("run convoy");
    let e = refused(&out);
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // A CA is made once: a second init does not replace it.
    let again = convoy_testkit::convoy(&[
        "tls",
        "init",
        "--out",
        other.path().to_str().expect("utf-8"),
    ]);
    assert!(refused(&again).contains("exists"));
}

#[test]
fn users_act_on_their_own_jobs_and_administrators_on_all() {
    let _g = serial();
    let mut c = Cluster::start(5_000);
    c.add_worker("alpha", 2);
    c.wait_workers(1);
    let alice = c.create_token("alice", false);
    let bob = c.create_token("bob", false);

    let whoami = c.convoy_as(&alice, &["whoami"]);
    assert!(whoami.status.success(), "{}", stderr(&whoami));
    assert!(String::from_utf8_lossy(&whoami.stdout).starts_with("alice with token"));

    let spec = digits_spec(c.dir.path(), "alices", 100_000, 1);
    let out = c.convoy_as(&alice, &["submit", spec.to_str().expect("utf-8"), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON")["job_id"]
        .as_str()
        .expect("an id")
        .to_string();
    c.wait_step(&id, 0, Duration::from_secs(120));

    // Bob sees the job and its owner, but may not act on it or read it.
    let listed = c.convoy_as(&bob, &["jobs", "--user", "alice", "--json"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let jobs: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    assert_eq!(jobs[0]["owner"], "alice", "{jobs}");
    for args in [
        vec!["cancel", &id],
        vec!["logs", &id],
        vec!["checkpoints", &id],
        vec!["workers"],
        vec!["admin", "token", "list"],
    ] {
        let e = refused(&c.convoy_as(&bob, &args));
        assert!(
            e.contains("bob") && (e.contains("alice") || e.contains("administrators only")),
            "{args:?}: {e}"
        );
    }
    // Without a token, nothing.
    let e = refused(&c.convoy_as("", &["jobs"]));
    assert!(e.contains("no token"), "{e}");

    // Alice may; so may an administrator.
    let logs = c.convoy_as(&alice, &["logs", &id]);
    assert!(logs.status.success(), "{}", stderr(&logs));
    let cancel = c.convoy(&["cancel", &id]);
    assert!(cancel.status.success(), "{}", stderr(&cancel));
    c.wait_state(&id, "cancelled", Duration::from_secs(60));
}

#[test]
fn a_machine_without_the_join_token_or_the_required_certificate_does_not_become_a_worker() {
    let _g = serial();
    let mut c = Cluster::start_with(5_000, &["--require-worker-cert"]);

    // The join token alone is not enough here: the daemon keeps retrying, saying why.
    let w = c.spawn_worker("nocert", &c.worker_args("nocert", 1));
    let log = w.log().to_path_buf();
    c.wait_for(
        "the worker without a certificate to be refused",
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(&log)
                .is_ok_and(|t| t.contains("client certificate signed by its CA"))
        },
    );
    drop(w);

    // A wrong join token, with the certificate.
    let wrong = c.dir.path().join("wrong.token");
    convoy_service::secret_file::write(&wrong, "not-the-join-token-0123456789").expect("write");
    let mut args = c.worker_args("wrongtoken", 1);
    let at = args
        .iter()
        .position(|a| a == "--join-token-file")
        .expect("the join token flag");
    args[at + 1] = wrong.display().to_string();
    args.extend([
        "--tls-cert".into(),
        c.tls_file("worker.pem"),
        "--tls-key".into(),
        c.tls_file("worker.key"),
    ]);
    let w = c.spawn_worker("wrongtoken", &args);
    let log = w.log().to_path_buf();
    c.wait_for(
        "the worker with a wrong join token to be refused",
        Duration::from_secs(60),
        || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("not a token of this cluster")),
    );
    drop(w);

    // Both: a worker.
    c.add_worker_with(
        "good",
        1,
        &[
            "--tls-cert".into(),
            c.tls_file("worker.pem"),
            "--tls-key".into(),
            c.tls_file("worker.key"),
        ],
    );
    let workers = c.json(&["workers"]);
    let names: Vec<&str> = workers
        .as_array()
        .expect("workers")
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(names, ["good"]);
}
