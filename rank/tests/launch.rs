//! `convoy-rank` as the worker daemon starts it: one argument, the launch file. A rank that
//! cannot start says why in one line on stderr (the daemon ships it, and the coordinator puts
//! it in the job's failure reason) and exits 1.

use std::process::Command;

use convoy_service::RankLaunch;

fn rank(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_convoy-rank"))
        .args(args)
        .output()
        .expect("run convoy-rank");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_missing_launch_file_is_one_line_naming_it() {
    let (code, err) = rank(&["/nonexistent/launch.toml".as_ref()]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/launch.toml"), "{err}");
}

#[test]
fn a_spec_that_disagrees_with_the_placement_fails_before_any_network_call() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = convoy_testkit::specs::TinyGpt::default().write(dir.path());
    let launch = RankLaunch {
        job_id: "job-1".into(),
        generation: 1,
        rank: 0,
        world_size: 2,
        // Nothing listens here: the rank must fail on the spec before it tries.
        coordinator: "http://127.0.0.1:1".into(),
        spec,
        workdir: dir.path().display().to_string(),
        advertise_host: "127.0.0.1".into(),
        threads: Some(1),
        collective_timeout_ms: 60_000,
        upload_retry_ms: 1_000,
        credential: String::new(),
        ring_secret: String::new(),
        tls_ca: None,
        data_roots: vec![],
    };
    let path = dir.path().join("launch.toml");
    launch.write(&path).expect("write");
    let (code, err) = rank(&[path.as_os_str()]);
    // The job's own fault: the coordinator fails it without retrying or blaming the worker.
    assert_eq!(code, i32::from(convoy_service::EXIT_JOB_ERROR), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("the spec says world_size = 1, the placement has 2 ranks"),
        "{err}"
    );
}
