//! The daemons' settings as an operator meets them: flags over environment over a settings
//! file over defaults, every value printed at start with where it came from, and a cluster
//! setting given for an existing data directory applied (and said so), never ignored.

use std::time::Duration;

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
