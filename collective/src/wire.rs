//! The bytes on a ring connection.
//!
//! A connection opens with a [`Hello`] and a challenge from the connecting (left) rank,
//! answered by a [`Hello`] from the accepting (right) rank whose `status` says whether it was
//! accepted; if it was, the acceptor's challenge and its answer to the connector's follow, then
//! the connector's answer, then the acceptor's verdict on it (one byte, 0: accepted). See
//! `proof` for the answers.
//! After that, each collective is one [`OpHeader`] followed by raw elements, sent once per
//! ring step. All integers and elements are little-endian.

use std::ops::{Add, Div};

#[cfg(target_endian = "big")]
compile_error!(
    "the ring's wire format is little-endian; convoy-worker supports little-endian targets only"
);

/// First bytes of every handshake: a stray client (or an HTTP probe) fails here.
pub const MAGIC: [u8; 4] = *b"CVRG";
/// Bumped whenever the handshake or the framing changes (2: the challenge-response).
pub const VERSION: u16 = 2;
/// magic (4) · version (u16) · generation (u64) · rank (u32) · world (u32) · status (u8).
pub const HELLO_LEN: usize = 23;
/// tag `b'O'` (1) · element kind (1) · zero padding (6) · sequence number (u64) · element count (u64).
pub const HEADER_LEN: usize = 24;

/// Whether the accepting rank took the connection, and if not, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Accepted,
    WrongVersion,
    WrongGeneration,
    WrongWorld,
    WrongRank,
    /// A status byte this version does not know.
    Unknown(u8),
}

impl Status {
    fn byte(self) -> u8 {
        match self {
            Status::Accepted => 0,
            Status::WrongVersion => 1,
            Status::WrongGeneration => 2,
            Status::WrongWorld => 3,
            Status::WrongRank => 4,
            Status::Unknown(b) => b,
        }
    }

    fn from_byte(b: u8) -> Status {
        match b {
            0 => Status::Accepted,
            1 => Status::WrongVersion,
            2 => Status::WrongGeneration,
            3 => Status::WrongWorld,
            4 => Status::WrongRank,
            b => Status::Unknown(b),
        }
    }
}

/// One side's identity in the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    /// The job attempt this rank belongs to; a restarted job gets a new one, so a zombie rank
    /// from an earlier attempt is recognised and turned away.
    pub generation: u64,
    pub rank: u32,
    pub world: u32,
    /// Always `Accepted` from the connecting side; the verdict in the reply.
    pub status: Status,
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6..14].copy_from_slice(&self.generation.to_le_bytes());
        b[14..18].copy_from_slice(&self.rank.to_le_bytes());
        b[18..22].copy_from_slice(&self.world.to_le_bytes());
        b[22] = self.status.byte();
        b
    }

    /// Fails only on a wrong magic: everything else is for the caller to judge.
    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Hello, String> {
        if b[0..4] != MAGIC {
            return Err(format!(
                "not a convoy ring peer (first bytes {:02x?}, expected {:02x?})",
                &b[0..4],
                MAGIC
            ));
        }
        Ok(Hello {
            version: u16::from_le_bytes([b[4], b[5]]),
            generation: le_u64(&b[6..14]),
            rank: le_u32(&b[14..18]),
            world: le_u32(&b[18..22]),
            status: Status::from_byte(b[22]),
        })
    }

    /// The verdict on `self` as received by a rank expecting `expected`'s version,
    /// generation and world and the given sender rank.
    pub fn judge(&self, expected: &Hello) -> Status {
        if self.version != expected.version {
            Status::WrongVersion
        } else if self.generation != expected.generation {
            Status::WrongGeneration
        } else if self.world != expected.world {
            Status::WrongWorld
        } else if self.rank != expected.rank {
            Status::WrongRank
        } else {
            Status::Accepted
        }
    }

    /// One line saying how `self` differs from what was `expected` (for error messages).
    pub fn mismatch(&self, expected: &Hello) -> String {
        match self.judge(expected) {
            Status::WrongVersion => format!(
                "protocol version {} (this rank speaks {})",
                self.version, expected.version
            ),
            Status::WrongGeneration => format!(
                "generation {} (this ring is generation {}; a rank from another attempt of the job)",
                self.generation, expected.generation
            ),
            Status::WrongWorld => format!(
                "world size {} (this ring has {})",
                self.world, expected.world
            ),
            Status::WrongRank => format!("rank {} (expected rank {})", self.rank, expected.rank),
            Status::Accepted | Status::Unknown(_) => "no mismatch".into(),
        }
    }
}

/// Element types the ring can carry: plain old data with the arithmetic the reduction needs.
pub trait Elem:
    bytemuck::Pod + Send + Sync + Add<Output = Self> + Div<Output = Self> + 'static
{
    /// Written into every [`OpHeader`], so ranks that disagree on the type fail loudly.
    const KIND: u8;
    const NAME: &'static str;
    fn from_count(n: usize) -> Self;
}

impl Elem for f32 {
    const KIND: u8 = 1;
    const NAME: &'static str = "f32";
    fn from_count(n: usize) -> Self {
        n as f32
    }
}

impl Elem for f64 {
    const KIND: u8 = 2;
    const NAME: &'static str = "f64";
    fn from_count(n: usize) -> Self {
        n as f64
    }
}

/// Sent before each collective's first message: both neighbours must be running the same
/// collective (same sequence number, element type and length), or the bytes that follow
/// would be misread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpHeader {
    pub kind: u8,
    pub seq: u64,
    pub len: u64,
}

impl OpHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = b'O';
        b[1] = self.kind;
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<OpHeader, String> {
        if b[0] != b'O' || b[2..8] != [0u8; 6] {
            return Err(format!("garbled collective header {:02x?}", &b[..8]));
        }
        Ok(OpHeader {
            kind: b[1],
            seq: le_u64(&b[8..16]),
            len: le_u64(&b[16..24]),
        })
    }

    pub fn describe(&self) -> String {
        let kind = match self.kind {
            k if k == f32::KIND => f32::NAME.to_string(),
            k if k == f64::KIND => f64::NAME.to_string(),
            k => format!("element kind {k}"),
        };
        format!("collective #{} of {} {kind}", self.seq, self.len)
    }
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_and_header_round_trip() {
        let h = Hello {
            version: VERSION,
            generation: 0x0102_0304_0506_0708,
            rank: 3,
            world: 4,
            status: Status::WrongRank,
        };
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
        let mut bad = h.encode();
        bad[0] = b'G';
        assert!(Hello::decode(&bad).is_err());
        let o = OpHeader {
            kind: f32::KIND,
            seq: 7,
            len: 1 << 40,
        };
        assert_eq!(OpHeader::decode(&o.encode()), Ok(o));
        assert_eq!(o.describe(), "collective #7 of 1099511627776 f32");
    }
}
