//! How log entries and snapshots are stored: each is sealed in a [`convoy_envelope`] record
//! (kind, format version, a type tag per command variant, and a checksum over it all) around a
//! MessagePack payload that names every field and enum variant. Nothing stored depends on the
//! order of a declaration, a flipped bit is caught by the checksum before anything is decoded,
//! and a field added later (with a serde default) still reads older records.

use convoy_envelope::{EnvelopeError, Header, Kind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Index;
use crate::error::StoreError;
use crate::replication::{AddressBook, MemberChange};
use crate::state::{ClusterState, Command};

pub const ENTRY: Kind = Kind(*b"LOGE");
pub const SNAPSHOT: Kind = Kind(*b"SNAP");
pub const PROPOSAL: Kind = Kind(*b"PROP");
pub const PROPOSAL_VERSION: u16 = 1;
pub const MEMBER_CHANGE: Kind = Kind(*b"MEMB");
pub const MEMBER_CHANGE_VERSION: u16 = 1;
/// 1: the first enveloped format (MessagePack payloads).
pub const ENTRY_VERSION: u16 = 1;
pub const SNAPSHOT_VERSION: u16 = 1;

/// Each command's type tag. Fixed forever: a new variant takes the next free number, and a
/// removed one's number is never reused.
pub fn tag(cmd: &Command) -> u16 {
    match cmd {
        Command::SubmitJob(_) => 1,
        Command::CancelJob { .. } => 2,
        Command::RegisterWorker { .. } => 3,
        Command::Heartbeat { .. } => 4,
        Command::Cordon { .. } => 5,
        Command::Uncordon { .. } => 6,
        Command::StartAttempt { .. } => 7,
        Command::ReportProgress { .. } => 8,
        Command::ReportRankExit { .. } => 9,
        Command::Tick { .. } => 10,
        Command::ResumeJob { .. } => 11,
        Command::Configure(_) => 12,
        Command::DeleteJob { .. } => 13,
        Command::CreateToken(_) => 14,
        Command::RevokeToken { .. } => 15,
        Command::SetCredentialKey { .. } => 16,
    }
}

/// The highest tag this build knows; a greater one is from a newer convoy.
const LAST_TAG: u16 = 16;

pub fn encode_entry(cmd: &Command, index: Index) -> Result<Vec<u8>, StoreError> {
    let payload = payload(cmd, &format!("entry {index}"))?;
    Ok(convoy_envelope::seal(
        Header {
            kind: ENTRY,
            version: ENTRY_VERSION,
            tag: tag(cmd),
        },
        &payload,
    ))
}

/// Opens and decodes one entry; every failure is a message to complete "entry N …".
pub fn decode_entry(bytes: &[u8]) -> Result<Command, String> {
    let (header, payload) = convoy_envelope::open(bytes, ENTRY, ENTRY_VERSION..=ENTRY_VERSION)
        .map_err(|e| e.to_string())?;
    if header.tag == 0 || header.tag > LAST_TAG {
        return Err(EnvelopeError::UnknownTag {
            kind: ENTRY,
            tag: header.tag,
        }
        .to_string());
    }
    let cmd: Command = from_payload(payload)?;
    if tag(&cmd) != header.tag {
        return Err(format!(
            "has type tag {} but holds a command of tag {}",
            header.tag,
            tag(&cmd)
        ));
    }
    Ok(cmd)
}

/// A batch of commands proposed to the replicated log as one Raft entry (one group commit),
/// with who proposed it so that the proposer can answer its callers once it is applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The proposing replica's node id.
    pub origin: u64,
    /// Unique per origin and process start (see `ReplicatedState`).
    pub seq: u64,
    pub commands: Vec<Command>,
    /// Log lines and step metrics, written by every replica to its records store as they are
    /// applied, so that a job's logs survive a failover. Not part of the state machine.
    #[serde(default)]
    pub records: Vec<RecordOp>,
}

/// One write to the records store (see `server::records`), with its protobuf bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordOp {
    /// A `LogLine`: a rank's output or one of convoy's own job events.
    Log {
        job: crate::model::JobId,
        #[serde(with = "serde_bytes")]
        line: Vec<u8>,
    },
    /// A `StepMetrics` of rank 0.
    Metrics {
        job: crate::model::JobId,
        #[serde(with = "serde_bytes")]
        metrics: Vec<u8>,
    },
    /// A deleted job's logs and metrics, and its checkpoints unless they are kept, removed
    /// from every replica (the leader's handler removes its own first, to count them).
    ForgetJob {
        job: crate::model::JobId,
        checkpoints: bool,
    },
    /// Checkpoints of `job` the job's retention lets go, as the leader decided once a newer
    /// one was held by a majority: removed from every replica in log order.
    ForgetCheckpoints {
        job: crate::model::JobId,
        steps: Vec<u64>,
    },
}

pub fn encode_proposal(p: &Proposal) -> Result<Vec<u8>, StoreError> {
    let payload = payload(p, &format!("proposal {} of node {}", p.seq, p.origin))?;
    Ok(convoy_envelope::seal(
        Header {
            kind: PROPOSAL,
            version: PROPOSAL_VERSION,
            tag: 0,
        },
        &payload,
    ))
}

/// Opens and decodes a replicated entry; every failure is a message to complete "entry N …".
pub fn decode_proposal(bytes: &[u8]) -> Result<Proposal, String> {
    let (_, payload) = convoy_envelope::open(bytes, PROPOSAL, PROPOSAL_VERSION..=PROPOSAL_VERSION)
        .map_err(|e| e.to_string())?;
    from_payload(payload)
}

#[derive(Serialize)]
struct SnapshotRef<'a> {
    index: Index,
    state: &'a ClusterState,
    /// A replica's snapshot carries the member addresses (a member that joins learns them
    /// from it); a single coordinator's has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    members: Option<&'a AddressBook>,
}

#[derive(Deserialize)]
struct Snapshot {
    index: Index,
    state: ClusterState,
    #[serde(default)]
    members: Option<AddressBook>,
}

pub fn encode_snapshot(index: Index, state: &ClusterState) -> Result<Vec<u8>, StoreError> {
    encode_snapshot_with(index, state, None)
}

/// A replica's snapshot: the state and the address book at `index`.
pub fn encode_replica_snapshot(
    index: Index,
    state: &ClusterState,
    members: &AddressBook,
) -> Result<Vec<u8>, StoreError> {
    encode_snapshot_with(index, state, Some(members))
}

fn encode_snapshot_with(
    index: Index,
    state: &ClusterState,
    members: Option<&AddressBook>,
) -> Result<Vec<u8>, StoreError> {
    let payload = payload(
        &SnapshotRef {
            index,
            state,
            members,
        },
        &format!("the snapshot at {index}"),
    )?;
    Ok(convoy_envelope::seal(
        Header {
            kind: SNAPSHOT,
            version: SNAPSHOT_VERSION,
            tag: 0,
        },
        &payload,
    ))
}

/// Opens and decodes a snapshot: the index it covers and the state.
pub fn decode_snapshot(bytes: &[u8]) -> Result<(Index, ClusterState), String> {
    decode_replica_snapshot(bytes).map(|(index, state, _)| (index, state))
}

/// Opens and decodes a replica's snapshot: also the address book, when it has one (those
/// made before members could change have none).
pub fn decode_replica_snapshot(
    bytes: &[u8],
) -> Result<(Index, ClusterState, Option<AddressBook>), String> {
    let (_, payload) = convoy_envelope::open(bytes, SNAPSHOT, SNAPSHOT_VERSION..=SNAPSHOT_VERSION)
        .map_err(|e| e.to_string())?;
    let s: Snapshot = from_payload(payload)?;
    Ok((s.index, s.state, s.members))
}

/// The context of a membership change entry.
pub fn encode_member_change(c: &MemberChange) -> Result<Vec<u8>, StoreError> {
    let payload = payload(
        c,
        &format!("membership change {} of node {}", c.seq, c.origin),
    )?;
    Ok(convoy_envelope::seal(
        Header {
            kind: MEMBER_CHANGE,
            version: MEMBER_CHANGE_VERSION,
            tag: 0,
        },
        &payload,
    ))
}

pub fn decode_member_change(bytes: &[u8]) -> Result<MemberChange, String> {
    let (_, payload) = convoy_envelope::open(
        bytes,
        MEMBER_CHANGE,
        MEMBER_CHANGE_VERSION..=MEMBER_CHANGE_VERSION,
    )
    .map_err(|e| e.to_string())?;
    from_payload(payload)
}

fn payload<T: Serialize + ?Sized>(value: &T, what: &str) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(value).map_err(|e| StoreError::Encode {
        what: what.to_string(),
        msg: e.to_string(),
    })
}

/// Decodes a payload whose checksum held. Reading from a slice bounds every allocation by the
/// bytes present: a length prefix that claims more is an error, not an allocation.
fn from_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(payload).map_err(|e| format!("does not decode: {e}"))
}
