//! Forming the ring: connect to the right neighbour, accept the left one, check both
//! handshakes. Peers start at different times, so both sides retry until the deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{CollectiveError, Peer};
use crate::proof::{ANSWER_LEN, CHALLENGE_LEN, Exchange, Side, challenge};
use crate::wire::{HELLO_LEN, Hello, Status, VERSION};

/// Where a rank sits in the ring and how long it waits for its peers.
#[derive(Clone, Debug)]
pub struct RingConfig {
    pub rank: usize,
    pub world: usize,
    /// Every rank's listen address; index = rank.
    pub addrs: Vec<SocketAddr>,
    /// The job attempt; only ranks of the same generation form a ring.
    pub generation: u64,
    /// How long to wait for peers to start, and the longest a peer may stay silent during a
    /// collective before it counts as dead.
    pub timeout: Duration,
    /// The attempt's ring secret: neighbours prove they know it (see `proof`). Empty for a
    /// ring of a coordinator without authentication, whose ranks prove nothing.
    pub secret: Vec<u8>,
}

/// The two streams of one rank: it sends to the right and receives from the left.
pub(crate) struct Links {
    pub right: TcpStream,
    pub left: TcpStream,
}

impl Links {
    /// Once the ring has formed, collectives run both links from one thread with
    /// non-blocking I/O and `poll`, which enforces the timeout.
    pub fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        self.right.set_nonblocking(on)?;
        self.left.set_nonblocking(on)
    }
}

/// How often an idle accept loop and a refused connect look again.
const POLL: Duration = Duration::from_millis(5);
const RETRY: Duration = Duration::from_millis(20);

pub(crate) fn establish(
    cfg: &RingConfig,
    listener: TcpListener,
    right: &Peer,
    left: &Peer,
) -> Result<Links, CollectiveError> {
    let deadline = Instant::now() + cfg.timeout;
    let cancel = AtomicBool::new(false);
    let rejected = Mutex::new(None);
    thread::scope(|s| {
        let acceptor = s.spawn(|| accept_left(cfg, &listener, left, deadline, &cancel, &rejected));
        let out = connect_right(cfg, right, deadline).map_err(|e| match e {
            // What the acceptor turned away explains many a timeout (e.g. a generation
            // mismatch seen from the other side).
            CollectiveError::ConnectTimeout {
                peer,
                timeout,
                last,
            } => {
                let note = match rejected.lock().map(|r| r.clone()) {
                    Ok(Some(r)) => format!("; meanwhile turned away: {r}"),
                    _ => String::new(),
                };
                CollectiveError::ConnectTimeout {
                    peer,
                    timeout,
                    last: last + &note,
                }
            }
            e => e,
        });
        if out.is_err() {
            // No ring without the right link: stop waiting for the left one.
            cancel.store(true, Ordering::Relaxed);
        }
        let inbound = acceptor.join().map_err(|_| {
            CollectiveError::Broken("the thread accepting the left neighbour panicked".into())
        });
        let right = out?;
        Ok(Links {
            right,
            left: inbound??,
        })
    })
}

fn identity(cfg: &RingConfig, rank: usize) -> Hello {
    Hello {
        version: VERSION,
        generation: cfg.generation,
        rank: rank as u32,
        world: cfg.world as u32,
        status: Status::Accepted,
    }
}

/// Socket options: no Nagle delay for the small headers, and timeouts so a silent peer ends
/// the handshake with an error instead of a hang (collectives then time out in `poll`).
fn configure(s: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// A socket timeout of zero means "none" to the OS; keep it positive.
fn positive(d: Duration) -> Duration {
    d.max(Duration::from_millis(1))
}

enum Attempt {
    /// Worth trying again (the peer is not up yet, or dropped us mid-handshake).
    Retry(String),
    /// The peer is up and said no, or is not who it should be: retrying will not help.
    Fatal(CollectiveError),
}

fn connect_right(
    cfg: &RingConfig,
    peer: &Peer,
    deadline: Instant,
) -> Result<TcpStream, CollectiveError> {
    let mut last = String::from("no attempt made");
    loop {
        let left_time = remaining(deadline);
        if left_time.is_zero() {
            return Err(CollectiveError::ConnectTimeout {
                peer: peer.clone(),
                timeout: cfg.timeout,
                last,
            });
        }
        match TcpStream::connect_timeout(&peer.addr, left_time) {
            Ok(s) => match handshake_out(cfg, s, peer, deadline) {
                Ok(s) => return Ok(s),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(why)) => last = why,
            },
            Err(e) => last = e.to_string(),
        }
        thread::sleep(RETRY.min(remaining(deadline)));
    }
}

fn handshake_out(
    cfg: &RingConfig,
    mut s: TcpStream,
    peer: &Peer,
    deadline: Instant,
) -> Result<TcpStream, Attempt> {
    let retry = |what: &str, e: std::io::Error| Attempt::Retry(format!("{what}: {e}"));
    let wait = positive(remaining(deadline));
    configure(&s, wait).map_err(|e| retry("socket options", e))?;
    let ours = challenge();
    let mut hello = identity(cfg, cfg.rank).encode().to_vec();
    hello.extend_from_slice(&ours);
    s.write_all(&hello)
        .map_err(|e| retry("sending handshake", e))?;
    let mut buf = [0u8; HELLO_LEN];
    s.read_exact(&mut buf)
        .map_err(|e| retry("waiting for the handshake reply", e))?;
    let fatal = |msg: String| {
        Attempt::Fatal(CollectiveError::Handshake {
            peer: peer.clone(),
            msg,
        })
    };
    let reply = Hello::decode(&buf).map_err(fatal)?;
    let expected = identity(cfg, peer.rank);
    match reply.status {
        Status::Accepted => {}
        Status::Unknown(b) => return Err(fatal(format!("rejected our handshake (status {b})"))),
        _ => {
            // The reply carries the peer's own identity: say how we differ from it.
            let ours = identity(cfg, cfg.rank);
            let theirs = Hello {
                rank: ours.rank,
                ..reply
            };
            let why = match reply.status {
                Status::WrongRank => {
                    format!("it expected its left neighbour, not rank {}", cfg.rank)
                }
                _ => format!("it has {}", theirs.mismatch(&ours)),
            };
            return Err(fatal(format!("rejected our handshake: {why}")));
        }
    }
    if reply.judge(&expected) != Status::Accepted {
        return Err(fatal(format!(
            "the peer at this address is {}",
            reply.mismatch(&expected)
        )));
    }
    let mut challenge = [0u8; CHALLENGE_LEN];
    let mut answer = [0u8; ANSWER_LEN];
    s.read_exact(&mut challenge)
        .and_then(|()| s.read_exact(&mut answer))
        .map_err(|e| retry("waiting for the peer's proof", e))?;
    let exchange = Exchange {
        secret: &cfg.secret,
        generation: cfg.generation,
        connector: cfg.rank as u32,
        connector_challenge: ours,
        acceptor_challenge: challenge,
    };
    if !exchange.check(Side::Acceptor, &answer) {
        return Err(fatal(
            "it does not know this attempt's ring secret (not a rank of this attempt)".into(),
        ));
    }
    s.write_all(&exchange.answer(Side::Connector))
        .map_err(|e| retry("sending our proof", e))?;
    let mut verdict = [0u8; 1];
    s.read_exact(&mut verdict)
        .map_err(|e| retry("waiting for the verdict on our proof", e))?;
    if verdict[0] != 0 {
        return Err(fatal(
            "it rejected our proof of the ring secret (this rank's secret is not its attempt's)"
                .into(),
        ));
    }
    configure(&s, cfg.timeout).map_err(|e| retry("socket options", e))?;
    Ok(s)
}

fn accept_left(
    cfg: &RingConfig,
    listener: &TcpListener,
    peer: &Peer,
    deadline: Instant,
    cancel: &AtomicBool,
    turned_away: &Mutex<Option<String>>,
) -> Result<TcpStream, CollectiveError> {
    let local = |during, source| CollectiveError::Local { during, source };
    listener
        .set_nonblocking(true)
        .map_err(|e| local("listener: set non-blocking", e))?;
    let mut rejected: Option<String> = None;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(CollectiveError::Broken(
                "connecting to the right neighbour failed".into(),
            ));
        }
        match listener.accept() {
            Ok((s, from)) => match handshake_in(cfg, s, from, peer, deadline) {
                Ok(s) => return Ok(s),
                Err(why) => {
                    if let Ok(mut t) = turned_away.lock() {
                        *t = Some(why.clone());
                    }
                    rejected = Some(why);
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if remaining(deadline).is_zero() {
                    return Err(CollectiveError::AcceptTimeout {
                        peer: peer.clone(),
                        timeout: cfg.timeout,
                        rejected,
                    });
                }
                thread::sleep(POLL);
            }
            Err(e) => return Err(local("accepting the left neighbour", e)),
        }
    }
}

/// Reads and judges a connecting rank's hello and answers it. `Err` is why the connection
/// was turned away (kept for the timeout message if the real neighbour never shows up).
fn handshake_in(
    cfg: &RingConfig,
    mut s: TcpStream,
    from: SocketAddr,
    peer: &Peer,
    deadline: Instant,
) -> Result<TcpStream, String> {
    let io = |what: &str, e: std::io::Error| format!("connection from {from}: {what}: {e}");
    s.set_nonblocking(false)
        .map_err(|e| io("socket options", e))?;
    configure(&s, positive(remaining(deadline))).map_err(|e| io("socket options", e))?;
    let mut buf = [0u8; HELLO_LEN];
    s.read_exact(&mut buf)
        .map_err(|e| io("reading handshake", e))?;
    let hello = Hello::decode(&buf).map_err(|e| format!("connection from {from}: {e}"))?;
    let expected = identity(cfg, peer.rank);
    let status = hello.judge(&expected);
    let mut reply = identity(cfg, cfg.rank);
    reply.status = status;
    // Best effort when rejecting: the verdict helps the other side's error message.
    let sent = s.write_all(&reply.encode());
    if status != Status::Accepted {
        return Err(format!(
            "connection from {from} has {}",
            hello.mismatch(&expected)
        ));
    }
    sent.map_err(|e| io("answering handshake", e))?;
    // Now the challenge-response: the connector's challenge followed its hello.
    let mut theirs = [0u8; CHALLENGE_LEN];
    s.read_exact(&mut theirs)
        .map_err(|e| io("reading the challenge", e))?;
    let exchange = Exchange {
        secret: &cfg.secret,
        generation: cfg.generation,
        connector: hello.rank,
        connector_challenge: theirs,
        acceptor_challenge: challenge(),
    };
    let mut proof = exchange.acceptor_challenge.to_vec();
    proof.extend_from_slice(&exchange.answer(Side::Acceptor));
    s.write_all(&proof)
        .map_err(|e| io("sending our proof", e))?;
    let mut answer = [0u8; ANSWER_LEN];
    s.read_exact(&mut answer)
        .map_err(|e| io("reading its proof", e))?;
    let proven = exchange.check(Side::Connector, &answer);
    // Best effort when rejecting, as above.
    let told = s.write_all(&[u8::from(!proven)]);
    if !proven {
        return Err(format!(
            "connection from {from} did not prove it knows this attempt's ring secret"
        ));
    }
    told.map_err(|e| io("answering its proof", e))?;
    configure(&s, cfg.timeout).map_err(|e| io("socket options", e))?;
    Ok(s)
}
