//! What can go wrong in the ring, or in setting up NCCL for a CUDA job. Every variant about a
//! connection names the peer (rank and address), because "which rank died" is the first
//! question when a job stops.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// A neighbour in the ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub rank: usize,
    pub addr: SocketAddr,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rank {} ({})", self.rank, self.addr)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    #[error("invalid ring config: {0}")]
    Config(String),
    /// The right neighbour never accepted a valid connection (it is not up, or not listening).
    #[error("could not connect to {peer} within {timeout:?}: {last}")]
    ConnectTimeout {
        peer: Peer,
        timeout: Duration,
        last: String,
    },
    /// The left neighbour never connected with a valid handshake.
    #[error("no connection from {peer} within {timeout:?}{}", rejected_note(.rejected))]
    AcceptTimeout {
        peer: Peer,
        timeout: Duration,
        rejected: Option<String>,
    },
    /// A peer answered with the wrong identity or refused ours (a stale generation, a wrong
    /// rank or world size, another protocol version).
    #[error("handshake with {peer} failed: {msg}")]
    Handshake { peer: Peer, msg: String },
    #[error("{peer} was silent for {timeout:?} while {during}")]
    Timeout {
        peer: Peer,
        timeout: Duration,
        during: &'static str,
    },
    #[error("connection to {peer} closed while {during}: {what}")]
    Closed {
        peer: Peer,
        during: &'static str,
        what: String,
    },
    #[error("{peer}: {during}: {source}")]
    Io {
        peer: Peer,
        during: &'static str,
        #[source]
        source: io::Error,
    },
    /// The neighbour is running a different collective than this rank (another size or
    /// element type, or another sequence number): the ranks disagree about the program.
    #[error("{peer} is out of step: {msg}")]
    Desync { peer: Peer, msg: String },
    /// An earlier collective failed; the ring's streams are in an unknown state.
    #[error("the ring failed earlier: {0}")]
    Broken(String),
    /// This rank's own listener or sockets failed (not a peer's fault).
    #[error("{during}: {source}")]
    Local {
        during: &'static str,
        #[source]
        source: io::Error,
    },
    /// A CUDA rank cannot load NCCL. cudarc opens `libnccl.so` by that name, which NCCL
    /// installs often lack, so the message says how to provide it.
    #[error(
        "libnccl could not be loaded (libnccl.so not found through LD_LIBRARY_PATH): install NCCL, \
         e.g. the nvidia-nccl-cu12 wheel, and put its lib folder (nvidia/nccl/lib) on the worker \
         daemon's LD_LIBRARY_PATH; the daemon links libnccl.so to its libnccl.so.2 for the ranks"
    )]
    NcclMissing,
    /// The NCCL unique id a rank got from the rendezvous is not one: rank 0 creates it, so a
    /// wrong length means rank 0 did not set NCCL up (or runs another convoy).
    #[error(
        "the NCCL unique id from the rendezvous has {len} bytes, not {expected}: rank 0 creates \
         and publishes it when it starts a CUDA job of several ranks"
    )]
    NcclId { len: usize, expected: usize },
    /// NCCL or the CUDA driver could not set the communicator up, or not every rank joined it
    /// in time: one line that starts with this rank's number and names the problem.
    #[error("{0}")]
    Nccl(String),
}

fn rejected_note(rejected: &Option<String>) -> String {
    match rejected {
        Some(r) => format!(" (rejected: {r})"),
        None => String::new(),
    }
}

impl CollectiveError {
    /// Sorts an I/O error on a connection into timeout / closed / other, which is what an
    /// operator acts on.
    pub(crate) fn from_io(
        peer: &Peer,
        timeout: Duration,
        during: &'static str,
        e: io::Error,
    ) -> Self {
        use io::ErrorKind::*;
        match e.kind() {
            WouldBlock | TimedOut => CollectiveError::Timeout {
                peer: peer.clone(),
                timeout,
                during,
            },
            UnexpectedEof => CollectiveError::Closed {
                peer: peer.clone(),
                during,
                what: "the peer closed the connection".into(),
            },
            ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected => {
                CollectiveError::Closed {
                    peer: peer.clone(),
                    during,
                    what: e.to_string(),
                }
            }
            _ => CollectiveError::Io {
                peer: peer.clone(),
                during,
                source: e,
            },
        }
    }
}
