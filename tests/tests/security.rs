//! A secured cluster as its users and operators meet it (real processes, TLS with the
//! cluster's own CA, tokens): who can connect, who can act on what, which machines may join.
//! Every RPC's checks are in `coordinator/tests/authz.rs`; these are the end-to-end paths.

use std::process::Output;
use std::time::Duration;

use convoy_testkit::cluster::Cluster;
use convoy_testkit::serial;
use convoy_testkit::specs::{digits as digits_spec, with_data};

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

    // A failure reason quotes the rank's last words, which may quote its data: its owner
    // sees it, another user does not.
    let broken = c.dir.path().join("broken.toml");
    with_data(&spec, &broken, "\"/nonexistent/secret-data.csv\"");
    let out = c.convoy_as(
        &alice,
        &["submit", broken.to_str().expect("utf-8"), "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let failed = serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON")["job_id"]
        .as_str()
        .expect("an id")
        .to_string();
    c.wait_state(&failed, "failed", Duration::from_secs(120));
    let seen = |token: &str| {
        let out = c.convoy_as(token, &["job", "show", &failed, "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(seen(&alice).contains("secret-data.csv"));
    let by_bob = seen(&bob);
    assert!(
        !by_bob.contains("secret-data.csv") && by_bob.contains("shown to alice only"),
        "{by_bob}"
    );
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

/// A worker confines what its ranks may read and use: a job whose data lies outside the
/// worker's data roots fails once, naming the file, without blaming the worker; the ranks
/// it does run carry the memory and file-size limits it was given.
#[test]
fn a_worker_confines_its_ranks_to_its_data_roots_and_limits() {
    let _g = serial();
    let mut c = Cluster::start(5_000);
    let roots = c.dir.path().join("datasets");
    std::fs::create_dir_all(&roots).expect("mkdir");
    c.add_worker_with(
        "confined",
        1,
        &[
            "--data-roots".into(),
            roots.display().to_string(),
            "--rank-memory-limit-mb".into(),
            "4096".into(),
            "--rank-file-size-limit-mb".into(),
            "100".into(),
        ],
    );
    c.wait_workers(1);

    // The example's data lies in the repository, outside the roots.
    let outside = digits_spec(c.dir.path(), "outside", 50, 1);
    let id = c.submit(&outside, &[]);
    let job = c.wait_state(&id, "failed", Duration::from_secs(120));
    assert_eq!(job["attempts"].as_array().map(Vec::len), Some(1), "{job}");
    let reason = job["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("digits.csv.gz is outside this worker's data roots")
            && reason.contains("not retried"),
        "{reason}"
    );
    let workers = c.json(&["workers"]);
    assert_eq!(workers[0]["cordoned"], false, "{workers}");

    // Inside the roots it runs, under the limits.
    let data = roots.join("digits.csv.gz");
    std::fs::copy(convoy_testkit::examples("data/digits.csv.gz"), &data).expect("copy the data");
    let inside = digits_spec(c.dir.path(), "inside", 1_000_000, 1);
    with_data(
        &inside,
        &inside,
        &format!("{:?}", data.display().to_string()),
    );
    let id = c.submit(&inside, &[]);
    c.wait_step(&id, 1, Duration::from_secs(120));
    let worker = c.workers[0].pid();
    let ranks = std::process::Command::new("pgrep")
        .args(["-P", &worker.to_string()])
        .output()
        .expect("pgrep");
    let rank: u32 = String::from_utf8_lossy(&ranks.stdout)
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the rank's pid");
    let limits = std::fs::read_to_string(format!("/proc/{rank}/limits")).expect("limits");
    let limit = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l[name.len()..].split_whitespace().next())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        limit("Max address space"),
        (4096u64 << 20).to_string(),
        "{limits}"
    );
    assert_eq!(
        limit("Max file size"),
        (100u64 << 20).to_string(),
        "{limits}"
    );
}
