//! The ring all-reduce: reduce-scatter then all-gather over the ring's two TCP links.
//!
//! The buffer is cut into `world` chunks. In reduce-scatter step `s` rank `r` sends chunk
//! `r − s` to the right and adds the chunk `r − s − 1` arriving from the left into its own;
//! after `world − 1` steps rank `r` holds the complete sum of chunk `r + 1`. All-gather then
//! passes the finished chunks around the ring. Each rank sends and receives 2·(n−1)/n of the
//! buffer, whatever the world size.
//!
//! Determinism: chunk `c` is always summed in the same order (rank `c`'s value, then `c + 1`,
//! `c + 2`, …), and every rank ends with a copy of the owner's bits, so the result is the same
//! on every rank and on every run.

use std::io::{Read, Write};
use std::mem::size_of;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::connect::{Links, RingConfig, establish};
use crate::error::{CollectiveError, Peer};
use crate::wire::{Elem, HEADER_LEN, OpHeader};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// The sum divided by the world size (the owner of each chunk divides, so every rank
    /// receives the same bits).
    Mean,
}

/// Received data is added in segments of this many bytes: small enough to stay in cache
/// between the socket read and the addition.
const SEGMENT_BYTES: usize = 256 << 10;

/// One rank's end of a formed ring.
pub struct Ring {
    rank: usize,
    world: usize,
    timeout: Duration,
    /// `None` for a world of one.
    links: Option<Links>,
    right: Option<Peer>,
    left: Option<Peer>,
    /// Clones of the links' sockets, to shut them down while another thread uses them.
    closer: RingCloser,
    /// Collectives started so far; sent in each header so neighbours check they agree.
    seq: u64,
    /// The first failure; once a collective fails the streams may be mid-message.
    broken: Option<String>,
    /// 8-byte aligned scratch for received segments (viewed as `f32` or `f64`).
    scratch: Vec<f64>,
}

/// Shuts a ring's sockets down from any thread: unblocks a collective stuck on a peer and
/// tells the neighbours at once that this rank is gone.
#[derive(Debug, Default)]
pub struct RingCloser {
    streams: Vec<TcpStream>,
}

impl RingCloser {
    pub fn close(&self) {
        for s in &self.streams {
            // Already closed or never connected: nothing left to do either way.
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Ring {
    /// Joins the ring described by `cfg`: connects to rank `(rank + 1) % world` and accepts
    /// one connection from rank `(rank + world − 1) % world` on `listener` (this rank's, already
    /// bound to `cfg.addrs[rank]`), retrying until `cfg.timeout` while peers start.
    /// Connections with another generation, world size or rank are turned away.
    pub fn connect(cfg: RingConfig, listener: TcpListener) -> Result<Ring, CollectiveError> {
        if cfg.world == 0 || cfg.rank >= cfg.world {
            return Err(CollectiveError::Config(format!(
                "rank {} of world {}: need 0 <= rank < world",
                cfg.rank, cfg.world
            )));
        }
        if cfg.addrs.len() != cfg.world {
            return Err(CollectiveError::Config(format!(
                "{} addresses for a world of {}: need one per rank",
                cfg.addrs.len(),
                cfg.world
            )));
        }
        if u32::try_from(cfg.world).is_err() {
            return Err(CollectiveError::Config(format!(
                "world {} is too large",
                cfg.world
            )));
        }
        if cfg.timeout.is_zero() {
            return Err(CollectiveError::Config("timeout must be positive".into()));
        }
        let mut ring = Ring {
            rank: cfg.rank,
            world: cfg.world,
            timeout: cfg.timeout,
            links: None,
            right: None,
            left: None,
            closer: RingCloser::default(),
            seq: 0,
            broken: None,
            scratch: Vec::new(),
        };
        if cfg.world == 1 {
            return Ok(ring);
        }
        let peer = |rank: usize| Peer {
            rank,
            addr: cfg.addrs[rank],
        };
        let right = peer((cfg.rank + 1) % cfg.world);
        let left = peer((cfg.rank + cfg.world - 1) % cfg.world);
        let links = establish(&cfg, listener, &right, &left)?;
        let clone = |s: &TcpStream| {
            s.try_clone().map_err(|source| CollectiveError::Local {
                during: "cloning a socket handle",
                source,
            })
        };
        ring.closer = RingCloser {
            streams: vec![clone(&links.right)?, clone(&links.left)?],
        };
        // Collectives drive both sockets from one thread with poll (see `Ctx::run`).
        links
            .set_nonblocking(true)
            .map_err(|source| CollectiveError::Local {
                during: "switching the ring's sockets to non-blocking",
                source,
            })?;
        ring.links = Some(links);
        ring.right = Some(right);
        ring.left = Some(left);
        ring.scratch = vec![0.0; SEGMENT_BYTES / size_of::<f64>()];
        Ok(ring)
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// The rank this one receives from (`None` in a world of one).
    pub fn left(&self) -> Option<&Peer> {
        self.left.as_ref()
    }

    /// The rank this one sends to (`None` in a world of one).
    pub fn right(&self) -> Option<&Peer> {
        self.right.as_ref()
    }

    /// A handle that shuts this ring's sockets down from another thread.
    pub fn closer(&self) -> Result<RingCloser, CollectiveError> {
        let streams = self
            .closer
            .streams
            .iter()
            .map(|s| {
                s.try_clone().map_err(|source| CollectiveError::Local {
                    during: "cloning a socket handle",
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(RingCloser { streams })
    }

    /// Replaces `buf` on every rank with the elementwise sum (or mean) over ranks. Every rank
    /// must call it with the same length and element type, in the same order of collectives.
    /// After an error the ring is unusable (later calls return [`CollectiveError::Broken`]) and its
    /// sockets are shut down, so the neighbours fail promptly too.
    pub fn all_reduce<T: Elem>(
        &mut self,
        buf: &mut [T],
        op: ReduceOp,
    ) -> Result<(), CollectiveError> {
        if let Some(first) = &self.broken {
            return Err(CollectiveError::Broken(first.clone()));
        }
        let result = self.all_reduce_inner(buf, op);
        if let Err(e) = &result {
            self.broken = Some(e.to_string());
            self.closer.close();
        }
        result
    }

    fn all_reduce_inner<T: Elem>(
        &mut self,
        buf: &mut [T],
        op: ReduceOp,
    ) -> Result<(), CollectiveError> {
        let (Some(links), Some(right), Some(left)) = (&mut self.links, &self.right, &self.left)
        else {
            // A world of one: the sum is the value and the mean divides by one.
            return Ok(());
        };
        self.seq += 1;
        let header = OpHeader {
            kind: T::KIND,
            seq: self.seq,
            len: buf.len() as u64,
        };
        let (rank, world, n) = (self.rank, self.world, buf.len());
        let bounds: Vec<usize> = (0..=world)
            .map(|i| (i as u128 * n as u128 / world as u128) as usize)
            .collect();
        let ctx = Ctx {
            header,
            right,
            left,
            timeout: self.timeout,
            divisor: match op {
                ReduceOp::Sum => None,
                ReduceOp::Mean => Some(T::from_count(world)),
            },
        };
        let scratch: &mut [T] = bytemuck::cast_slice_mut(&mut self.scratch[..]);
        let steps: Vec<Step> = Schedule { rank, world }.steps().collect();
        ctx.run(links, buf, &bounds, &steps, scratch)
    }
}

/// Which chunks a rank sends and receives at each step.
#[derive(Clone, Copy)]
struct Schedule {
    rank: usize,
    world: usize,
}

struct Step {
    send: usize,
    recv: usize,
    /// Reduce-scatter adds what arrives; all-gather overwrites with it.
    add: bool,
    /// The last reduce-scatter step: `recv` is now this rank's finished chunk.
    owns: bool,
}

impl Schedule {
    fn steps(self) -> impl Iterator<Item = Step> {
        let (r, w) = (self.rank, self.world);
        (0..2 * (w - 1)).map(move |s| {
            if s < w - 1 {
                Step {
                    send: (r + w - s) % w,
                    recv: (r + 2 * w - s - 1) % w,
                    add: true,
                    owns: s == w - 2,
                }
            } else {
                let s = s - (w - 1);
                Step {
                    send: (r + 1 + w - s) % w,
                    recv: (r + w - s) % w,
                    add: false,
                    owns: false,
                }
            }
        })
    }
}

/// What every message of one collective needs to know.
struct Ctx<'a, T> {
    header: OpHeader,
    right: &'a Peer,
    left: &'a Peer,
    timeout: Duration,
    divisor: Option<T>,
}

/// How far the sending side has got: the step, and bytes of that step's chunk already written.
struct SendCursor {
    header: usize,
    step: usize,
    bytes: usize,
}

/// How far the receiving side has got: the step, bytes of that step's chunk read off the
/// socket, and elements of it finished (added, and divided on the owner's step).
struct RecvCursor {
    header: usize,
    header_buf: [u8; HEADER_LEN],
    step: usize,
    bytes: usize,
    done: usize,
}

impl<T: Elem> Ctx<'_, T> {
    /// Runs every step of the schedule on this thread with non-blocking sockets, pipelined
    /// element by element: the chunk sent at step `i + 1` is the one received at step `i`, and
    /// its first elements go to the right as soon as they are reduced, while the rest are still
    /// arriving from the left. Nothing waits for a whole chunk, so the ring's latency is a few
    /// socket buffers rather than `2(n−1)` chunk transfers back to back, and one thread per
    /// rank does all of it (no sender thread, no hand-off).
    ///
    /// Safety of the in-place updates without a lock: a byte of chunk `c` is overwritten in
    /// all-gather only after the same byte went out in reduce-scatter, because what arrives
    /// there has gone round the whole ring since this rank sent it.
    fn run(
        &self,
        links: &mut Links,
        buf: &mut [T],
        bounds: &[usize],
        steps: &[Step],
        scratch: &mut [T],
    ) -> Result<(), CollectiveError> {
        let esize = size_of::<T>();
        let header = self.header.encode();
        let chunk = |c: usize| bounds[c]..bounds[c + 1];
        let mut tx = SendCursor {
            header: 0,
            step: 0,
            bytes: 0,
        };
        let mut rx = RecvCursor {
            header: 0,
            header_buf: [0; HEADER_LEN],
            step: 0,
            bytes: 0,
            done: 0,
        };
        // Bytes read into `scratch` but not yet added (at most one partial element).
        let mut pending = 0usize;
        loop {
            // Steps whose chunk is complete (or empty) are finished without I/O.
            while tx.step < steps.len()
                && tx.header == HEADER_LEN
                && tx.bytes == chunk(steps[tx.step].send).len() * esize
            {
                tx.step += 1;
                tx.bytes = 0;
            }
            while rx.step < steps.len()
                && rx.header == HEADER_LEN
                && rx.done == chunk(steps[rx.step].recv).len()
            {
                rx.step += 1;
                rx.bytes = 0;
                rx.done = 0;
            }
            if tx.step == steps.len() && rx.step == steps.len() {
                return Ok(());
            }

            // What may go out now: everything before the first step, then only what the
            // previous step has finished receiving.
            let sendable = if tx.step == steps.len() {
                0
            } else if tx.step == 0 || rx.step >= tx.step {
                chunk(steps[tx.step].send).len() * esize
            } else if rx.step + 1 == tx.step {
                rx.done * esize
            } else {
                0
            };
            let want_send = tx.header < HEADER_LEN || tx.bytes < sendable;
            let want_recv = rx.step < steps.len();
            let mut progressed = false;

            if want_send {
                let out: &[u8] = if tx.header < HEADER_LEN {
                    &header[tx.header..]
                } else {
                    let range = chunk(steps[tx.step].send);
                    &bytemuck::cast_slice::<T, u8>(&buf[range])[tx.bytes..sendable]
                };
                match (&links.right).write(out) {
                    Ok(0) => {
                        return Err(CollectiveError::from_io(
                            self.right,
                            self.timeout,
                            "sending",
                            std::io::ErrorKind::WriteZero.into(),
                        ));
                    }
                    Ok(k) => {
                        progressed = true;
                        if tx.header < HEADER_LEN {
                            tx.header += k;
                        } else {
                            tx.bytes += k;
                        }
                    }
                    Err(e) if retryable(&e) => {}
                    Err(e) => {
                        return Err(CollectiveError::from_io(
                            self.right,
                            self.timeout,
                            "sending",
                            e,
                        ));
                    }
                }
            }

            if want_recv {
                let io = |e| CollectiveError::from_io(self.left, self.timeout, "receiving", e);
                let step = &steps[rx.step];
                let dst = &mut buf[chunk(step.recv)];
                let read = if rx.header < HEADER_LEN {
                    (&links.left).read(&mut rx.header_buf[rx.header..])
                } else if step.add {
                    let room = (dst.len() - rx.done) * esize - pending;
                    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut scratch[..]);
                    let end = (pending + room).min(bytes.len());
                    (&links.left).read(&mut bytes[pending..end])
                } else {
                    let bytes: &mut [u8] = bytemuck::cast_slice_mut(dst);
                    (&links.left).read(&mut bytes[rx.bytes..])
                };
                match read {
                    Ok(0) => return Err(io(std::io::ErrorKind::UnexpectedEof.into())),
                    Ok(k) => {
                        progressed = true;
                        if rx.header < HEADER_LEN {
                            rx.header += k;
                            if rx.header == HEADER_LEN {
                                self.check_header(&rx.header_buf)?;
                            }
                        } else {
                            rx.bytes += k;
                            let before = rx.done;
                            if step.add {
                                pending += k;
                                let whole = pending / esize;
                                for (d, s) in
                                    dst[rx.done..rx.done + whole].iter_mut().zip(&*scratch)
                                {
                                    *d = *d + *s;
                                }
                                rx.done += whole;
                                let rest = pending - whole * esize;
                                let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut scratch[..]);
                                bytes.copy_within(whole * esize..pending, 0);
                                pending = rest;
                            } else {
                                rx.done = rx.bytes / esize;
                            }
                            if step.owns
                                && let Some(div) = self.divisor
                            {
                                dst[before..rx.done].iter_mut().for_each(|x| *x = *x / div);
                            }
                        }
                    }
                    Err(e) if retryable(&e) => {}
                    Err(e) => return Err(io(e)),
                }
            }

            if !progressed {
                self.wait(links, want_send, want_recv)?;
            }
        }
    }

    fn check_header(&self, bytes: &[u8; HEADER_LEN]) -> Result<(), CollectiveError> {
        let theirs = OpHeader::decode(bytes).map_err(|msg| CollectiveError::Desync {
            peer: self.left.clone(),
            msg,
        })?;
        if theirs != self.header {
            return Err(CollectiveError::Desync {
                peer: self.left.clone(),
                msg: format!(
                    "it sent {}, this rank is running {}",
                    theirs.describe(),
                    self.header.describe()
                ),
            });
        }
        Ok(())
    }

    /// Blocks until a socket this rank needs is ready, or the timeout passes: a neighbour that
    /// neither sends nor reads for that long is taken for dead (it is the left one when this
    /// rank was waiting for data, since everything flows from the left).
    fn wait(&self, links: &Links, send: bool, recv: bool) -> Result<(), CollectiveError> {
        let timeout = PollTimeout::try_from(self.timeout).unwrap_or(PollTimeout::MAX);
        // Only the sockets waited on: a hang-up on the other one would wake poll at once and
        // spin; it surfaces on the next read or write instead.
        let mut fds = Vec::with_capacity(2);
        if send {
            fds.push(PollFd::new(links.right.as_fd(), PollFlags::POLLOUT));
        }
        if recv {
            fds.push(PollFd::new(links.left.as_fd(), PollFlags::POLLIN));
        }
        loop {
            match poll(&mut fds, timeout) {
                Ok(0) => {
                    let (peer, during) = if recv {
                        (self.left, "receiving")
                    } else {
                        (self.right, "sending")
                    };
                    return Err(CollectiveError::Timeout {
                        peer: peer.clone(),
                        timeout: self.timeout,
                        during,
                    });
                }
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    return Err(CollectiveError::Local {
                        during: "waiting for the ring's sockets",
                        source: e.into(),
                    });
                }
            }
        }
    }
}

fn retryable(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}
