//! Field numbers are append-only: peers of different versions must keep understanding each
//! other. These golden encodings change if a field of these messages is renumbered or retyped,
//! which is the mistake this test exists to catch.

use convoy_proto::v1::{Assignment, Backend, RankExit, StartRank, SubmitJobRequest, assignment};
use prost::Message;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn submit_request_encoding_is_stable() {
    let req = SubmitJobRequest {
        spec_toml: "x".into(),
        priority: -1,
        max_restarts: 3,
        progress_timeout_ms: 1000,
        ..Default::default()
    };
    assert_eq!(
        hex(&req.encode_to_vec()),
        "0a017810ffffffffffffffffff01180320e807"
    );
}

#[test]
fn assignment_and_exit_encodings_are_stable() {
    let start = Assignment {
        kind: Some(assignment::Kind::Start(StartRank {
            job_id: "j".into(),
            generation: 2,
            rank: 1,
            world_size: 2,
            spec_toml: "s".into(),
            ..Default::default()
        })),
    };
    assert_eq!(hex(&start.encode_to_vec()), "0a0c0a016a1002180120022a0173");
    // The backend (appended as field 8, varint): a CUDA rank.
    let cuda = Assignment {
        kind: Some(assignment::Kind::Start(StartRank {
            job_id: "j".into(),
            backend: Backend::Cuda as i32,
            ..Default::default()
        })),
    };
    assert_eq!(hex(&cuda.encode_to_vec()), "0a050a016a4002");
    let exit = RankExit {
        job_id: "j".into(),
        generation: 7,
        rank: 0,
        code: None,
        signal: Some(9),
        log_tail: "oom".into(),
    };
    let bytes = exit.encode_to_vec();
    assert_eq!(hex(&bytes), "0a016a1007280932036f6f6d");
    assert_eq!(RankExit::decode(bytes.as_slice()).expect("decodes"), exit);
}
