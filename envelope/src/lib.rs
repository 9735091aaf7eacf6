//! The envelope every record convoy stores is sealed in: command-log entries, snapshots,
//! checkpoint manifests and training states.
//!
//! A stored record must say what it is and prove it is intact before anything decodes it, so
//! that a flipped bit, a torn write or a file of another kind or version is named as such
//! instead of being decoded into a plausible wrong value (or a panic). The header is fixed,
//! little-endian and 28 bytes:
//!
//! | bytes  | field    | meaning                                                        |
//! |--------|----------|----------------------------------------------------------------|
//! | 0..4   | magic    | `CNVY`                                                         |
//! | 4..8   | kind     | four ASCII letters naming the record kind, e.g. `LOGE`         |
//! | 8..10  | version  | the kind's format version                                      |
//! | 10..12 | tag      | which variant of the kind the payload holds (0 if none)        |
//! | 12..20 | length   | payload bytes that follow                                      |
//! | 20..28 | checksum | xxh3-64 of bytes 0..20 followed by the payload                 |
//!
//! The checksum covers the header too, so a damaged version or tag is reported as damage, not
//! as a record from another release. The payload's own encoding is the caller's business; the
//! tag exists so that a record's variant is named explicitly rather than by a position in an
//! enum's declaration.

use std::fmt;
use std::ops::RangeInclusive;

use xxhash_rust::xxh3::Xxh3;

pub const MAGIC: [u8; 4] = *b"CNVY";
pub const HEADER_LEN: usize = 28;
const CHECKED_LEN: usize = 20;

/// A record kind: four ASCII letters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kind(pub [u8; 4]);

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0).escape_debug().to_string())
    }
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kind({self})")
    }
}

/// What a sealed record says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub version: u16,
    pub tag: u16,
}

/// Why bytes are not an intact record of the expected kind and version. The messages complete
/// a sentence that starts with what the caller was reading ("entry 42 …").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("is {len} bytes, shorter than the {HEADER_LEN}-byte record header (truncated)")]
    Truncated { len: usize },
    #[error(
        "does not start with convoy's record magic (found {found:02x?}): not a convoy record, \
         or one written before records were versioned"
    )]
    NotARecord { found: [u8; 4] },
    #[error("says its payload is {claimed} bytes but {actual} follow (truncated or torn)")]
    Length { claimed: u64, actual: usize },
    #[error(
        "fails its checksum (stored {stored:#018x}, computed {computed:#018x}): the bytes are damaged"
    )]
    Checksum { stored: u64, computed: u64 },
    #[error("holds a {found} record where a {expected} record was expected")]
    Kind { expected: Kind, found: Kind },
    #[error(
        "is {kind} format version {found}; this convoy reads versions {min} to {max}{hint}",
        hint = if *found > *max { " (a newer convoy wrote it)" } else { " (an older convoy wrote it)" }
    )]
    Version {
        kind: Kind,
        found: u16,
        min: u16,
        max: u16,
    },
    #[error("has {kind} type tag {tag}, which this convoy does not know")]
    UnknownTag { kind: Kind, tag: u16 },
}

/// Seals `payload` as a record of `header`.
pub fn seal(header: Header, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&header.kind.0);
    out.extend_from_slice(&header.version.to_le_bytes());
    out.extend_from_slice(&header.tag.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let checksum = checksum(&out, payload);
    out.extend_from_slice(&checksum.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks that `bytes` are exactly one intact record of `kind` in one of the `versions` and
/// returns its header and payload. Nothing of the payload is interpreted here.
pub fn open(
    bytes: &[u8],
    kind: Kind,
    versions: RangeInclusive<u16>,
) -> Result<(Header, &[u8]), EnvelopeError> {
    let (header, payload) = open_any(bytes)?;
    if header.kind != kind {
        return Err(EnvelopeError::Kind {
            expected: kind,
            found: header.kind,
        });
    }
    if !versions.contains(&header.version) {
        return Err(EnvelopeError::Version {
            kind,
            found: header.version,
            min: *versions.start(),
            max: *versions.end(),
        });
    }
    Ok((header, payload))
}

/// Checks that `bytes` are exactly one intact record of any kind.
pub fn open_any(bytes: &[u8]) -> Result<(Header, &[u8]), EnvelopeError> {
    let (head, payload) = bytes
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(EnvelopeError::Truncated { len: bytes.len() })?;
    let field = |at: usize| -> [u8; 8] {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[at..at + 8]);
        b
    };
    let magic = [head[0], head[1], head[2], head[3]];
    if magic != MAGIC {
        return Err(EnvelopeError::NotARecord { found: magic });
    }
    let claimed = u64::from_le_bytes(field(12));
    if claimed != payload.len() as u64 {
        return Err(EnvelopeError::Length {
            claimed,
            actual: payload.len(),
        });
    }
    let stored = u64::from_le_bytes(field(20));
    let computed = checksum(&head[..CHECKED_LEN], payload);
    if stored != computed {
        return Err(EnvelopeError::Checksum { stored, computed });
    }
    let header = Header {
        kind: Kind([head[4], head[5], head[6], head[7]]),
        version: u16::from_le_bytes([head[8], head[9]]),
        tag: u16::from_le_bytes([head[10], head[11]]),
    };
    Ok((header, payload))
}

fn checksum(head: &[u8], payload: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(head);
    h.update(payload);
    h.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST: Kind = Kind(*b"TEST");

    fn header(version: u16, tag: u16) -> Header {
        Header {
            kind: TEST,
            version,
            tag,
        }
    }

    #[test]
    fn a_sealed_record_opens_to_its_header_and_payload() {
        let sealed = seal(header(2, 7), b"payload");
        let (h, p) = open(&sealed, TEST, 1..=2).expect("opens");
        assert_eq!((h, p), (header(2, 7), &b"payload"[..]));
        let empty = seal(header(1, 0), b"");
        assert_eq!(open(&empty, TEST, 1..=1).expect("opens").1, b"");
    }

    #[test]
    fn the_layout_is_stable() {
        // Pinned: every record convoy ever wrote is read through this layout.
        let sealed = seal(header(1, 3), b"ab");
        let hex: String = sealed.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "434e565954455354010003000200000000000000391e18c6e31c322f6162"
        );
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let sealed = seal(header(1, 3), b"some payload bytes");
        for i in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(
                open(&bad, TEST, 1..=1).is_err(),
                "bit {i} flipped unnoticed"
            );
        }
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let sealed = seal(header(3, 0), b"xyz");
        let msg = |r: Result<(Header, &[u8]), EnvelopeError>| r.expect_err("fails").to_string();
        assert!(msg(open(&sealed[..10], TEST, 3..=3)).contains("truncated"));
        assert!(msg(open(&sealed[..sealed.len() - 1], TEST, 3..=3)).contains("torn"));
        assert!(
            msg(open(
                b"CONVOYTS\x02\0\0\0 an old training state",
                TEST,
                3..=3
            ))
            .contains("magic")
        );
        let kind = msg(open(&sealed, Kind(*b"LOGE"), 3..=3));
        assert!(kind.contains("TEST record where a LOGE"), "{kind}");
        let newer = msg(open(&sealed, TEST, 1..=2));
        assert!(
            newer.contains("version 3") && newer.contains("newer"),
            "{newer}"
        );
        let older = msg(open(&sealed, TEST, 4..=5));
        assert!(older.contains("older"), "{older}");
        let mut bad = sealed.clone();
        bad[HEADER_LEN] ^= 0x40;
        assert!(msg(open(&bad, TEST, 3..=3)).contains("checksum"));
    }
}
