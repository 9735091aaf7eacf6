//! Golden encodings of what the coordinator stores: one command-log entry per command variant
//! and one snapshot, in format version 1. They pin the bytes a release writes, so that a
//! renamed field, a retyped value or a renumbered tag shows up here rather than as a log a
//! later release cannot read; and they must keep decoding to the same values for as long as
//! version 1 is read. `CONVOY_BLESS=1` rewrites them, for a deliberate new format version only.

mod common;

use std::path::PathBuf;

use convoy_coordinator::identity::{ApiToken, Identities};
use convoy_coordinator::log::codec;
use convoy_coordinator::{
    ClusterConfig, ClusterState, Command, JobId, RankExit, SubmitJob, WorkerId,
};

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.hex"))
}

fn hex(bytes: &[u8]) -> String {
    let mut s: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    s.push('\n');
    s
}

fn unhex(s: &str) -> Vec<u8> {
    let s = s.trim();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Compares `bytes` with the golden file `name` (or writes it when blessing) and returns the
/// golden bytes.
fn check(name: &str, bytes: &[u8]) -> Vec<u8> {
    let path = golden(name);
    if std::env::var_os("CONVOY_BLESS").is_some() {
        std::fs::write(&path, hex(bytes)).expect("write golden");
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (CONVOY_BLESS=1 writes it)", path.display()));
    assert_eq!(hex(bytes), want, "{name}: the stored format changed");
    unhex(&want)
}

fn every_command() -> Vec<(&'static str, Command)> {
    let mut submit = SubmitJob::parse(&common::spec("golden", 2, "cpu"), "golden.toml", 1_000)
        .expect("a valid spec");
    submit.request_id = "req-7".into();
    submit.priority = -1;
    submit.workdir = "/data".into();
    submit.owner = "alice".into();
    vec![
        ("submit-job-owner", Command::SubmitJob(submit)),
        (
            "cancel-job",
            Command::CancelJob {
                job: JobId(3),
                now: 2_000,
            },
        ),
        (
            "register-worker",
            Command::RegisterWorker {
                name: "gpu-01".into(),
                slots: 8,
                gpus: 2,
                instance: "i-1".into(),
                now: 3_000,
            },
        ),
        (
            "heartbeat",
            Command::Heartbeat {
                worker: WorkerId(4),
                now: 4_000,
            },
        ),
        (
            "cordon",
            Command::Cordon {
                worker: WorkerId(4),
            },
        ),
        (
            "uncordon",
            Command::Uncordon {
                worker: WorkerId(4),
            },
        ),
        (
            "start-attempt",
            Command::StartAttempt {
                job: JobId(3),
                generation: 2,
                placement: vec![WorkerId(4), WorkerId(5)],
                now: 5_000,
            },
        ),
        (
            "report-progress",
            Command::ReportProgress {
                job: JobId(3),
                generation: 2,
                step: 250,
                now: 6_000,
            },
        ),
        (
            "report-rank-exit",
            Command::ReportRankExit {
                job: JobId(3),
                generation: 2,
                rank: 1,
                exit: RankExit::Failure {
                    status: 137,
                    log_tail: "killed".into(),
                },
                now: 7_000,
            },
        ),
        ("tick", Command::Tick { now: 8_000 }),
        ("resume-job", Command::ResumeJob { job: JobId(3) }),
        ("delete-job", Command::DeleteJob { job: JobId(3) }),
        (
            "configure",
            Command::Configure(ClusterConfig {
                heartbeat_timeout: 9_000,
                auto_cordon_after: 0,
                restart_delay: 1_000,
            }),
        ),
        (
            "set-credential-key",
            Command::SetCredentialKey {
                key: (0..32).collect(),
            },
        ),
        (
            "create-token",
            Command::CreateToken(ApiToken {
                id: "0a1b2c3d4e5f".into(),
                user: "alice".into(),
                admin: false,
                hash: (100..132).collect(),
                created_at: 10_000,
                expires_at: Some(20_000),
            }),
        ),
        (
            "revoke-token",
            Command::RevokeToken {
                id: "0a1b2c3d4e5f".into(),
            },
        ),
    ]
}

/// The commands of format version 1 before users and credentials existed, as they were
/// written then (a submission without an owner).
fn commands_before_identities() -> Vec<Command> {
    every_command()
        .into_iter()
        .filter_map(|(_, cmd)| match cmd {
            Command::SubmitJob(mut s) => {
                s.owner = String::new();
                Some(Command::SubmitJob(s))
            }
            Command::SetCredentialKey { .. }
            | Command::CreateToken(_)
            | Command::RevokeToken { .. } => None,
            other => Some(other),
        })
        .collect()
}

/// An entry written before a field was added reads with the field's default.
#[test]
fn an_entry_written_before_a_field_was_added_still_reads() {
    let stored = unhex(
        &std::fs::read_to_string(golden("entry-v1-submit-job")).expect("the older golden entry"),
    );
    let want = commands_before_identities()
        .into_iter()
        .find(|c| matches!(c, Command::SubmitJob(_)))
        .expect("a submission");
    assert_eq!(codec::decode_entry(&stored).expect("decodes"), want);
}

#[test]
fn every_command_has_a_pinned_entry_that_decodes_to_it() {
    let commands = every_command();
    let mut tags: Vec<u16> = commands.iter().map(|(_, c)| codec::tag(c)).collect();
    tags.sort_unstable();
    tags.dedup();
    assert_eq!(tags.len(), commands.len(), "two variants share a tag");
    for (name, cmd) in commands {
        let bytes = codec::encode_entry(&cmd, 1).expect("encodes");
        let stored = check(&format!("entry-v1-{name}"), &bytes);
        assert_eq!(
            codec::decode_entry(&stored).expect("decodes"),
            cmd,
            "{name}"
        );
    }
}

fn state_of(commands: impl IntoIterator<Item = Command>) -> ClusterState {
    let mut state = ClusterState::new(ClusterConfig::default());
    for cmd in commands {
        let _ = state.apply(&cmd);
    }
    assert_eq!(state.jobs.len(), 1);
    state
}

fn golden_state() -> ClusterState {
    state_of(every_command().into_iter().map(|(_, c)| c))
}

/// The state an older snapshot holds: no owners and no identities.
fn state_before_identities() -> ClusterState {
    let mut state = state_of(commands_before_identities());
    state.identities = Identities::default();
    state
}

#[test]
fn a_snapshot_has_a_pinned_encoding_that_decodes_to_it() {
    let state = golden_state();
    let bytes = codec::encode_snapshot(12, &state).expect("encodes");
    let stored = check("snapshot-v1-identities", &bytes);
    let (index, decoded) = codec::decode_snapshot(&stored).expect("decodes");
    assert_eq!((index, decoded), (12, state));
}

/// Fields are only ever added to version 1, with a default: a snapshot written before the
/// state's `clock` existed reads as the same state with the clock at 0, and one written before
/// users and credentials, without owners or identities.
#[test]
fn a_snapshot_written_before_a_field_was_added_still_reads() {
    let read = |name: &str| {
        let stored = unhex(&std::fs::read_to_string(golden(name)).expect("an older snapshot"));
        codec::decode_snapshot(&stored).expect("decodes")
    };
    let mut want = state_before_identities();
    assert_eq!(read("snapshot-v1-clock"), (12, want.clone()));
    want.clock = 0;
    assert_eq!(read("snapshot-v1"), (12, want));
}

#[test]
fn a_record_from_an_unknown_version_or_tag_names_it() {
    let payload = rmp_serde::to_vec_named(&Command::Tick { now: 1 }).expect("encodes");
    let seal = |version, tag| {
        convoy_envelope::seal(
            convoy_envelope::Header {
                kind: codec::ENTRY,
                version,
                tag,
            },
            &payload,
        )
    };
    let newer = codec::decode_entry(&seal(2, 10)).unwrap_err();
    assert!(
        newer.contains("version 2") && newer.contains("newer"),
        "{newer}"
    );
    let unknown = codec::decode_entry(&seal(1, 99)).unwrap_err();
    assert!(unknown.contains("tag 99"), "{unknown}");
    let mismatch = codec::decode_entry(&seal(1, 3)).unwrap_err();
    assert!(
        mismatch.contains("tag 3") && mismatch.contains("tag 10"),
        "{mismatch}"
    );
    // A log from before the envelope (bare bincode) is refused, not misread.
    let old = codec::decode_entry(&[
        0x09, 0xe8, 0x07, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ])
    .unwrap_err();
    assert!(old.contains("before records were versioned"), "{old}");
}
