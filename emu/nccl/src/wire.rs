//! The messages between a rank and rank 0 (the hub), framed on a Unix stream socket.
//!
//! A frame is a 16-byte header (kind: u32, zero: u32, payload length: u64, little-endian) and
//! the payload: a fixed prefix per kind, then the bytes of a buffer where the kind has one.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use crate::abi::{DataType, RedOp};

/// The collectives (what a rank called, as every rank must call it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CollKind {
    AllReduce = 1,
    Broadcast = 2,
    Reduce = 3,
    AllGather = 4,
    ReduceScatter = 5,
}

/// One collective call as the ranks must agree on it. `count` is NCCL's count for the kind
/// (per rank's send for all-gather, per rank's receive for reduce-scatter); `op` is unused (sum)
/// by the kinds without one, `root` (0) likewise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    pub kind: CollKind,
    pub dtype: DataType,
    pub op: RedOp,
    pub root: u32,
    pub count: u64,
}

impl Call {
    /// What a rank reads as its contribution, in elements.
    pub fn send_elems(&self, rank: usize, nranks: usize) -> u64 {
        match self.kind {
            CollKind::AllReduce | CollKind::Reduce | CollKind::AllGather => self.count,
            CollKind::Broadcast if rank == self.root as usize => self.count,
            CollKind::Broadcast => 0,
            CollKind::ReduceScatter => self.count.saturating_mul(nranks as u64),
        }
    }

    /// What a rank receives, in elements.
    pub fn recv_elems(&self, rank: usize, nranks: usize) -> u64 {
        match self.kind {
            CollKind::AllReduce | CollKind::Broadcast | CollKind::ReduceScatter => self.count,
            CollKind::Reduce if rank == self.root as usize => self.count,
            CollKind::Reduce => 0,
            CollKind::AllGather => self.count.saturating_mul(nranks as u64),
        }
    }

    /// How a message names the call: `AllReduce(1000 × Float32, Sum)`.
    pub fn describe(&self) -> String {
        match self.kind {
            CollKind::AllReduce | CollKind::ReduceScatter => {
                format!(
                    "{:?}({} × {:?}, {:?})",
                    self.kind, self.count, self.dtype, self.op
                )
            }
            CollKind::Reduce => format!(
                "Reduce({} × {:?}, {:?}, root {})",
                self.count, self.dtype, self.op, self.root
            ),
            CollKind::Broadcast => format!(
                "Broadcast({} × {:?}, root {})",
                self.count, self.dtype, self.root
            ),
            CollKind::AllGather => format!("AllGather({} × {:?})", self.count, self.dtype),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Msg {
    /// A rank's first message to the hub.
    Hello {
        token: [u8; 16],
        rank: u32,
        nranks: u32,
    },
    /// The hub to every rank: all ranks have joined.
    Ready,
    /// A rank's input to its `seq`-th collective (counted from 0).
    Contrib { seq: u64, call: Call, data: Vec<u8> },
    /// The hub's answer: what the rank receives from its `seq`-th collective.
    Result { seq: u64, data: Vec<u8> },
    /// Point-to-point data: to the hub, `peer` is the destination; from the hub, the source.
    P2p { peer: u32, data: Vec<u8> },
    /// A failure that ends the communicator for everyone (an NCCL result code and the reason).
    Error { code: u32, message: String },
    /// The sender finalized its communicator: it sends nothing more.
    Bye,
    /// Rank 0 to the others: `rank` said goodbye (after everything of it rank 0 relayed).
    Left { rank: u32 },
}

const HELLO: u32 = 1;
const READY: u32 = 2;
const CONTRIB: u32 = 3;
const RESULT: u32 = 4;
const P2P: u32 = 5;
const ERROR: u32 = 6;
const BYE: u32 = 7;
const LEFT: u32 = 8;

/// Far beyond any buffer of a test, and small enough that a corrupted length is refused
/// before it is allocated.
pub const MAX_PAYLOAD: u64 = 1 << 40;

#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
// Elsewhere a write to a closed peer raises SIGPIPE, which Rust programs ignore by default.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: libc::c_int = 0;

/// Writes all of `buf`; a peer that has gone is an error (EPIPE), never a signal.
fn send_all(sock: &UnixStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is readable for `buf.len()` bytes and the descriptor is the open socket
        // `sock` owns for the whole call.
        let n = unsafe { libc::send(sock.as_raw_fd(), buf.as_ptr().cast(), buf.len(), SEND_FLAGS) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        // 0 < n <= buf.len().
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Writes one message. Callers serialize writes to a socket (one frame must not interleave
/// with another).
pub fn write_msg(sock: &UnixStream, msg: &Msg) -> io::Result<()> {
    let mut prefix = Vec::with_capacity(32);
    let (kind, data): (u32, &[u8]) = match msg {
        Msg::Hello {
            token,
            rank,
            nranks,
        } => {
            prefix.extend_from_slice(token);
            prefix.extend_from_slice(&rank.to_le_bytes());
            prefix.extend_from_slice(&nranks.to_le_bytes());
            (HELLO, &[])
        }
        Msg::Ready => (READY, &[]),
        Msg::Contrib { seq, call, data } => {
            prefix.extend_from_slice(&seq.to_le_bytes());
            prefix.extend_from_slice(&[call.kind as u8, call.dtype as u8, call.op as u8, 0]);
            prefix.extend_from_slice(&call.root.to_le_bytes());
            prefix.extend_from_slice(&call.count.to_le_bytes());
            (CONTRIB, data)
        }
        Msg::Result { seq, data } => {
            prefix.extend_from_slice(&seq.to_le_bytes());
            (RESULT, data)
        }
        Msg::P2p { peer, data } => {
            prefix.extend_from_slice(&peer.to_le_bytes());
            prefix.extend_from_slice(&[0; 4]);
            (P2P, data)
        }
        Msg::Error { code, message } => {
            prefix.extend_from_slice(&code.to_le_bytes());
            prefix.extend_from_slice(&[0; 4]);
            (ERROR, message.as_bytes())
        }
        Msg::Bye => (BYE, &[]),
        Msg::Left { rank } => {
            prefix.extend_from_slice(&rank.to_le_bytes());
            prefix.extend_from_slice(&[0; 4]);
            (LEFT, &[])
        }
    };
    let len = (prefix.len() + data.len()) as u64;
    let mut head = Vec::with_capacity(16 + prefix.len());
    head.extend_from_slice(&kind.to_le_bytes());
    head.extend_from_slice(&[0; 4]);
    head.extend_from_slice(&len.to_le_bytes());
    head.extend_from_slice(&prefix);
    send_all(sock, &head)?;
    send_all(sock, data)
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// The most a first message (a hello) may hold, before the sender has proved it is a rank.
pub const HELLO_LIMIT: u64 = 64;

/// Reads one message of at most `limit` bytes of payload; `Ok(None)` when the peer closed the
/// connection between messages.
pub fn read_msg(mut sock: &UnixStream, limit: u64) -> io::Result<Option<Msg>> {
    let mut head = [0u8; 16];
    // A clean end is EOF before the first byte of a header.
    let mut got = 0;
    while got < head.len() {
        match sock.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let kind = u32_at(&head, 0);
    let len = u64_at(&head, 8);
    if len > limit.min(MAX_PAYLOAD) {
        return Err(bad(format!("a message of {len} bytes")));
    }
    let prefix_len = match kind {
        HELLO => 24,
        READY | BYE => 0,
        CONTRIB => 24,
        RESULT => 8,
        P2P | ERROR | LEFT => 8,
        _ => return Err(bad(format!("unknown message kind {kind}"))),
    };
    let fixed = matches!(kind, HELLO | READY | BYE | LEFT);
    if len < prefix_len as u64 || (fixed && len != prefix_len as u64) {
        return Err(bad(format!("message kind {kind} of {len} bytes")));
    }
    let mut prefix = vec![0u8; prefix_len];
    sock.read_exact(&mut prefix)?;
    let data_len = usize::try_from(len - prefix_len as u64)
        .map_err(|_| bad(format!("a message of {len} bytes")))?;
    let mut data = vec![0u8; data_len];
    sock.read_exact(&mut data)?;
    Ok(Some(match kind {
        HELLO => {
            let mut token = [0u8; 16];
            token.copy_from_slice(&prefix[..16]);
            Msg::Hello {
                token,
                rank: u32_at(&prefix, 16),
                nranks: u32_at(&prefix, 20),
            }
        }
        READY => Msg::Ready,
        BYE => Msg::Bye,
        LEFT => Msg::Left {
            rank: u32_at(&prefix, 0),
        },
        CONTRIB => {
            let kind = match prefix[8] {
                1 => CollKind::AllReduce,
                2 => CollKind::Broadcast,
                3 => CollKind::Reduce,
                4 => CollKind::AllGather,
                5 => CollKind::ReduceScatter,
                k => return Err(bad(format!("unknown collective {k}"))),
            };
            let dtype = DataType::from_raw(u32::from(prefix[9])).map_err(|e| bad(e.to_string()))?;
            let op = RedOp::from_raw(u32::from(prefix[10])).map_err(|e| bad(e.to_string()))?;
            Msg::Contrib {
                seq: u64_at(&prefix, 0),
                call: Call {
                    kind,
                    dtype,
                    op,
                    root: u32_at(&prefix, 12),
                    count: u64_at(&prefix, 16),
                },
                data,
            }
        }
        RESULT => Msg::Result {
            seq: u64_at(&prefix, 0),
            data,
        },
        P2P => Msg::P2p {
            peer: u32_at(&prefix, 0),
            data,
        },
        ERROR => Msg::Error {
            code: u32_at(&prefix, 0),
            message: String::from_utf8_lossy(&data).into_owned(),
        },
        _ => return Err(bad(format!("unknown message kind {kind}"))),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_survives_the_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let msgs = vec![
            Msg::Hello {
                token: [7; 16],
                rank: 3,
                nranks: 4,
            },
            Msg::Ready,
            Msg::Contrib {
                seq: 9,
                call: Call {
                    kind: CollKind::ReduceScatter,
                    dtype: DataType::Bfloat16,
                    op: RedOp::Avg,
                    root: 0,
                    count: 5,
                },
                data: (0..20).collect(),
            },
            Msg::Result {
                seq: 9,
                data: vec![1, 2, 3],
            },
            Msg::P2p {
                peer: 2,
                data: vec![],
            },
            Msg::Error {
                code: 6,
                message: "rank 2 is gone".into(),
            },
            Msg::Bye,
            Msg::Left { rank: 1 },
        ];
        for m in &msgs {
            write_msg(&a, m).unwrap();
        }
        drop(a);
        for m in &msgs {
            assert_eq!(read_msg(&b, MAX_PAYLOAD).unwrap().as_ref(), Some(m));
        }
        assert_eq!(read_msg(&b, MAX_PAYLOAD).unwrap(), None);
    }

    #[test]
    fn a_frame_cut_short_is_an_error_not_an_end() {
        let (a, b) = UnixStream::pair().unwrap();
        send_all(&a, &[CONTRIB as u8, 0, 0]).unwrap();
        drop(a);
        assert!(read_msg(&b, MAX_PAYLOAD).is_err());
    }
}
