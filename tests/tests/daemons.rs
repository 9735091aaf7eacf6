//! The daemons' settings as an operator meets them: flags over environment over a settings
//! file over defaults, every value printed at start with where it came from, and a cluster
//! setting given for an existing data directory applied (and said so), never ignored.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use convoy_service::secret_file;
use convoy_testkit::bin_dir;
use convoy_testkit::harness::{Harness, HarnessError};

fn log(h: &Harness) -> String {
    std::fs::read_to_string(h.log("coordinator")).expect("the coordinator's log")
}

#[test]
fn coordinator_settings_are_layered_printed_and_replicated_ones_are_applied_on_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let h = Harness::new(&bin_dir(), dir.path()).expect("harness");
    let file = dir.path().join("coordinator.toml");
    std::fs::write(
        &file,
        "log_lines_per_job = 500\nheartbeat_interval_ms = 300\n",
    )
    .expect("write");
    let data = dir.path().join("data").display().to_string();
    let base = [
        "--config",
        file.to_str().expect("utf-8"),
        "--data-dir",
        &data,
        "--listen",
        "127.0.0.1:0",
        "--insecure",
    ]
    .map(String::from);
    let start = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut c = h.coordinator("coordinator", &args).expect("starts");
        assert!(c.stop(Duration::from_secs(30)), "stops on SIGTERM");
    };

    start(&["--heartbeat-interval-ms", "250", "--auto-cordon-after", "5"]);
    let text = log(&h);
    for want in [
        "setting heartbeat_interval_ms = 250 (flag --heartbeat-interval-ms)".to_string(),
        format!("setting log_lines_per_job = 500 (file {})", file.display()),
        "setting listen = 127.0.0.1:0 (flag --listen)".to_string(),
        "setting heartbeat_timeout_ms = 5000 (default)".to_string(),
        "setting auto_cordon_after = 5 (given)".to_string(),
    ] {
        assert!(text.contains(&want), "missing {want:?} in\n{text}");
    }

    // The data directory now holds the cluster's settings: one given replaces its stored
    // value, one not given keeps it (not the default).
    start(&["--heartbeat-timeout-ms", "2000"]);
    let text = log(&h);
    for want in [
        "setting heartbeat_timeout_ms = 2000 (given; replaces the stored value)",
        "setting auto_cordon_after = 5 (stored with the cluster state)",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    start(&[]);
    let text = log(&h);
    assert!(
        text.contains("setting heartbeat_timeout_ms = 2000 (stored with the cluster state)"),
        "{text}"
    );
}

#[test]
fn a_coordinator_given_an_unknown_setting_refuses_to_start_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let h = Harness::new(&bin_dir(), dir.path()).expect("harness");
    let file = dir.path().join("coordinator.toml");
    std::fs::write(&file, "heartbeat_timeout = 2000\n").expect("write");
    let args = [
        "--config",
        file.to_str().expect("utf-8"),
        "--data-dir",
        &dir.path().join("data").display().to_string(),
    ]
    .map(String::from);
    let e = h.coordinator("coordinator", &args).err().expect("refused");
    assert!(matches!(e, HarnessError::Exited { .. }), "{e}");
    let text = log(&h);
    let last = text.trim().lines().last().unwrap_or("");
    assert!(
        last.starts_with("convoy-coordinator: settings file ")
            && last.contains("unknown setting \"heartbeat_timeout\""),
        "{text}"
    );
}

#[test]
fn replica_settings_that_cannot_make_a_cluster_are_refused_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let h = Harness::new(&bin_dir(), dir.path()).expect("harness");
    let secret = dir.path().join("secret");
    secret_file::write(&secret, "0123456789abcdef0123").expect("write");
    let short = dir.path().join("short");
    secret_file::write(&short, "s3cret").expect("write");
    let data = dir.path().join("data");
    let peers = "1=127.0.0.1:7601,2=127.0.0.1:7602,3=127.0.0.1:7603";
    let refused = |args: &[&str]| -> String {
        let mut all: Vec<String> = ["--insecure", "--listen", "127.0.0.1:0", "--data-dir"]
            .map(String::from)
            .to_vec();
        all.push(data.display().to_string());
        all.extend(args.iter().map(|s| s.to_string()));
        let e = h.coordinator("coordinator", &all).err().expect("refused");
        assert!(matches!(e, HarnessError::Exited { .. }), "{e}");
        let text = log(&h);
        text.trim().lines().last().unwrap_or("").to_string()
    };
    let secret = secret.to_str().expect("utf-8");
    let with = |node: &str, peers: &str, secret: &str| {
        refused(&[
            "--node-id",
            node,
            "--peers",
            peers,
            "--cluster-id",
            "c",
            "--cluster-secret-file",
            secret,
        ])
    };
    let line = refused(&["--node-id", "1"]);
    assert!(
        line.contains("--node-id, --cluster-id and --cluster-secret-file need --peers"),
        "{line}"
    );
    let line = with("4", peers, secret);
    assert!(
        line.contains("--node-id 4 is not in --peers (members 1, 2, 3)"),
        "{line}"
    );
    let line = with("1", "1=127.0.0.1:7601,2=127.0.0.1:7601", secret);
    assert!(
        line.contains("--peers gives 127.0.0.1:7601 to both 1 and 2"),
        "{line}"
    );
    let line = with("1", "1=127.0.0.1:7601,1=127.0.0.1:7602", secret);
    assert!(line.contains("--peers names member 1 twice"), "{line}");
    let line = with("1", "one=127.0.0.1:7601", secret);
    assert!(line.contains("the id must be a number above 0"), "{line}");
    let line = with("1", peers, short.to_str().expect("utf-8"));
    assert!(
        line.contains("at least 16 printable ASCII characters"),
        "{line}"
    );

    // A data directory of a coordinator that ran alone is not silently turned into a replica.
    let mut c = h
        .coordinator(
            "coordinator",
            &[
                "--insecure",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data.to_str().expect("utf-8"),
            ]
            .map(String::from),
        )
        .expect("starts alone");
    assert!(c.stop(Duration::from_secs(30)), "stops on SIGTERM");
    let line = with("1", peers, secret);
    assert!(
        line.contains("holds a single coordinator's command log, and this coordinator was started with --peers"),
        "{line}"
    );
}

#[test]
fn a_coordinator_without_tokens_or_insecure_refuses_to_start_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let h = Harness::new(&bin_dir(), dir.path()).expect("harness");
    let data = dir.path().join("data").display().to_string();
    let admin = dir.path().join("admin.token");
    let join = dir.path().join("join.token");
    secret_file::write(&admin, "admin-token-0123456789abcdef").expect("write");
    secret_file::write(&join, "join-token-0123456789abcdef").expect("write");
    let refused = |extra: &[&str]| -> String {
        let mut args: Vec<String> = ["--listen", "127.0.0.1:0", "--data-dir", &data]
            .map(String::from)
            .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        let e = h.coordinator("coordinator", &args).err().expect("refused");
        assert!(matches!(e, HarnessError::Exited { .. }), "{e}");
        log(&h).trim().lines().last().unwrap_or("").to_string()
    };
    let line = refused(&[]);
    assert!(
        line.contains("needs --admin-token-file and --join-token-file")
            && line.contains("--insecure"),
        "{line}"
    );
    let admin = admin.to_str().expect("utf-8");
    let join = join.to_str().expect("utf-8");
    let line = refused(&["--admin-token-file", admin, "--join-token-file", admin]);
    assert!(line.contains("the same"), "{line}");
    std::fs::set_permissions(join, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let line = refused(&["--admin-token-file", admin, "--join-token-file", join]);
    assert!(
        line.contains("mode 644") && line.contains("chmod 600"),
        "{line}"
    );
}

/// `convoy dev` stopped by SIGTERM (a service manager, `timeout`) stops its daemons too: they
/// run in process groups of their own, and would otherwise outlive it.
#[test]
fn convoy_dev_stops_its_daemons_when_it_is_terminated() {
    use std::io::{BufRead, BufReader};
    let mut dev = std::process::Command::new(bin_dir().join("convoy"))
        .args(["dev", "--workers", "1"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start convoy dev");
    let mut lines = BufReader::new(dev.stderr.take().expect("stderr")).lines();
    let mut dir = None;
    for line in lines.by_ref() {
        let line = line.expect("a line");
        if let Some(at) = line.find("logs in ") {
            dir = Some(std::path::PathBuf::from(line[at + 8..].trim()));
        }
        if line.contains("ready;") {
            break;
        }
    }
    let dir = dir.expect("convoy dev names its directory");
    let pids: Vec<u32> = ["coordinator.ready", "dev-worker-0.ready"]
        .iter()
        .map(|f| {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join(f)).expect("ready file"))
                    .expect("JSON");
            v["pid"].as_u64().expect("a pid") as u32
        })
        .collect();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &dev.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = dev.wait().expect("convoy dev exits");
    assert!(status.success(), "{status:?}");
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "daemon {pid} outlived convoy dev"
        );
    }
}
