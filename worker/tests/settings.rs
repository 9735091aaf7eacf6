//! `convoy-worker`'s settings as an operator gives them: flags, `CONVOY_*` variables and a
//! TOML file, one precedence rule, and one line on stderr for anything it cannot use.

use std::process::Command;

fn worker(args: &[&str]) -> (i32, String) {
    worker_with_env(args, &[])
}

fn worker_with_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_convoy-worker"))
        .args(args)
        .env_remove("CONVOY_CONFIG")
        .env_remove("CONVOY_SLOTS")
        .envs(env.iter().copied())
        .output()
        .expect("run convoy-worker");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The error line: the last line of stderr (the settings report comes first).
fn last_line(err: &str) -> &str {
    err.trim().lines().last().unwrap_or("")
}

#[test]
fn an_unknown_key_in_the_settings_file_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("worker.toml");
    std::fs::write(&file, "slots = 2\nstop_grace = 5000\n").expect("write");
    let (code, err) = worker(&["--config", file.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{err}");
    let line = last_line(&err);
    assert!(line.starts_with("convoy-worker: settings file "), "{err}");
    assert!(line.contains("unknown setting \"stop_grace\""), "{err}");
}

#[test]
fn a_flag_overrides_the_file_and_bad_values_are_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("worker.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &file,
        format!(
            "slots = 2\ndata_dir = {:?}\ncoordinator = \"127.0.0.1:1\"\n",
            data.display().to_string()
        ),
    )
    .expect("write");
    let f = file.to_str().expect("utf-8");
    // The flag's 0 wins over the file's 2, and the daemon refuses it.
    let (code, err) = worker(&["--config", f, "--slots", "0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("setting slots = 0 (flag --slots)"), "{err}");
    assert!(
        last_line(&err).contains("slots = 0: a worker needs at least one slot"),
        "{err}"
    );
    // A value of the wrong type in the file.
    std::fs::write(&file, "slots = \"many\"\n").expect("write");
    let (code, err) = worker(&["--config", f]);
    assert_eq!(code, 1, "{err}");
    assert!(last_line(&err).contains("slots from file"), "{err}");
}

#[test]
fn the_environment_beats_the_file_and_a_flag_beats_the_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("worker.toml");
    std::fs::write(&file, "slots = 2\ncoordinator = \"127.0.0.1:1\"\n").expect("write");
    let f = file.to_str().expect("utf-8");
    // Slots 0 is refused after the report, which shows where the 0 came from.
    let (code, err) = worker_with_env(&["--config", f], &[("CONVOY_SLOTS", "0")]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("setting slots = 0 (environment CONVOY_SLOTS)"),
        "{err}"
    );
    let (code, err) = worker_with_env(&["--config", f, "--slots", "0"], &[("CONVOY_SLOTS", "5")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("setting slots = 0 (flag --slots)"), "{err}");
}

/// Starts a worker with otherwise valid settings and `rank_program`, for a refusal at start.
fn start_with_rank_program(rank_program: &str) -> (i32, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    worker(&[
        "--coordinator",
        "127.0.0.1:1",
        "--name",
        "w",
        "--data-dir",
        data.to_str().expect("utf-8"),
        "--rank-program",
        rank_program,
    ])
}

#[test]
fn a_missing_rank_program_is_refused_at_start() {
    let (code, err) = start_with_rank_program("/nonexistent/convoy-rank");
    assert_eq!(code, 1, "{err}");
    assert!(
        last_line(&err).contains("rank_program = /nonexistent/convoy-rank: no such file"),
        "{err}"
    );
}

/// As root, ranks would run as root and a job could read any file of the machine: the
/// daemon refuses unless told. (Run as another user, there is nothing to refuse.)
#[test]
fn a_worker_running_as_root_refuses_unless_allowed() {
    use std::os::unix::fs::MetadataExt;
    if !std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        eprintln!("skipped: not running as root");
        return;
    }
    // Any existing file passes the rank program check, which comes first.
    let (code, err) = start_with_rank_program(env!("CARGO_BIN_EXE_convoy-worker"));
    assert_eq!(code, 1, "{err}");
    let line = last_line(&err);
    assert!(
        line.contains("runs as root") && line.contains("--allow-root-ranks"),
        "{err}"
    );
}

#[test]
fn gpus_must_be_ones_the_driver_shows() {
    // No CUDA driver here (or not the one of a GPU 7): the worker sees no such GPU. With the
    // emulated driver on LD_LIBRARY_PATH it sees 0 and 1, never 7.
    let (code, err) = worker(&["--gpus", "7", "--coordinator", "127.0.0.1:1"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        last_line(&err).contains("--gpus: GPU 7 is not one this daemon sees"),
        "{err}"
    );
    let (code, err) = worker(&["--gpus", "0,0", "--coordinator", "127.0.0.1:1"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        last_line(&err).contains("--gpus: GPU 0 is not one this daemon sees")
            || last_line(&err).contains("--gpus: GPU 0 is listed twice"),
        "{err}"
    );
}
