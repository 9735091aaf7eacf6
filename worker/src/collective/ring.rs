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
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::connect::{Links, establish};
use super::error::{Peer, RingError};
use super::wire::{Elem, HEADER_LEN, OpHeader};

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
}

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

/// Below this many bytes in flight per link, messages are written and then read on one
/// thread: the kernel's socket buffers hold them, and a sender thread would only add latency.
const INLINE_BYTES: usize = 64 << 10;

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
    pub fn connect(cfg: RingConfig, listener: TcpListener) -> Result<Ring, RingError> {
        if cfg.world == 0 || cfg.rank >= cfg.world {
            return Err(RingError::Config(format!(
                "rank {} of world {}: need 0 <= rank < world",
                cfg.rank, cfg.world
            )));
        }
        if cfg.addrs.len() != cfg.world {
            return Err(RingError::Config(format!(
                "{} addresses for a world of {}: need one per rank",
                cfg.addrs.len(),
                cfg.world
            )));
        }
        if u32::try_from(cfg.world).is_err() {
            return Err(RingError::Config(format!(
                "world {} is too large",
                cfg.world
            )));
        }
        if cfg.timeout.is_zero() {
            return Err(RingError::Config("timeout must be positive".into()));
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
            s.try_clone().map_err(|source| RingError::Local {
                during: "cloning a socket handle",
                source,
            })
        };
        ring.closer = RingCloser {
            streams: vec![clone(&links.right)?, clone(&links.left)?],
        };
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
    pub fn closer(&self) -> Result<RingCloser, RingError> {
        let streams = self
            .closer
            .streams
            .iter()
            .map(|s| {
                s.try_clone().map_err(|source| RingError::Local {
                    during: "cloning a socket handle",
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(RingCloser { streams })
    }

    /// Replaces `buf` on every rank with the elementwise sum (or mean) over ranks. Every rank
    /// must call it with the same length and element type, in the same order of collectives.
    /// After an error the ring is unusable (later calls return [`RingError::Broken`]) and its
    /// sockets are shut down, so the neighbours fail promptly too.
    pub fn all_reduce<T: Elem>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<(), RingError> {
        if let Some(first) = &self.broken {
            return Err(RingError::Broken(first.clone()));
        }
        let result = self.all_reduce_inner(buf, op);
        if let Err(e) = &result {
            self.broken = Some(e.to_string());
            self.closer.close();
        }
        result
    }

    fn all_reduce_inner<T: Elem>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<(), RingError> {
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
        let mut chunks: Vec<Option<&mut [T]>> = Vec::with_capacity(world);
        let mut rest = buf;
        for i in 0..world {
            let (c, r) = rest.split_at_mut(bounds[i + 1] - bounds[i]);
            chunks.push(Some(c));
            rest = r;
        }
        let largest = bounds.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        let ctx = Ctx {
            header,
            right,
            left,
            timeout: self.timeout,
            divisor: match op {
                ReduceOp::Sum => None,
                ReduceOp::Mean => Some(T::from_count(world)),
            },
            closer: &self.closer,
        };
        let scratch: &mut [T] = bytemuck::cast_slice_mut(&mut self.scratch[..]);
        let steps = Schedule { rank, world };
        if largest * size_of::<T>() * world <= INLINE_BYTES {
            ctx.run_inline(links, &mut chunks, scratch, steps)
        } else {
            ctx.run_threaded(links, &mut chunks, scratch, steps)
        }
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
    closer: &'a RingCloser,
}

fn internal(what: &str) -> RingError {
    RingError::Broken(format!("internal error: {what}"))
}

impl<T: Elem> Ctx<'_, T> {
    /// Small messages: write, then read, on this thread.
    fn run_inline(
        &self,
        links: &mut Links,
        chunks: &mut [Option<&mut [T]>],
        scratch: &mut [T],
        schedule: Schedule,
    ) -> Result<(), RingError> {
        for (i, step) in schedule.steps().enumerate() {
            let out = chunks[step.send]
                .as_deref()
                .ok_or_else(|| internal("send chunk missing"))?;
            send(&mut links.right, (i == 0).then_some(&self.header), out)
                .map_err(|e| RingError::from_io(self.right, self.timeout, "sending", e))?;
            self.receive(&mut links.left, i == 0, &step, chunks, scratch)?;
        }
        Ok(())
    }

    /// Large messages: a sender thread writes to the right while this thread reads from the
    /// left, so neither side waits for the other's socket buffer to drain (which would
    /// deadlock the ring on chunks larger than the buffers).
    fn run_threaded<'c>(
        &self,
        links: &mut Links,
        chunks: &mut [Option<&'c mut [T]>],
        scratch: &mut [T],
        schedule: Schedule,
    ) -> Result<(), RingError> {
        let Links { right, left } = links;
        let closer = self.closer;
        thread::scope(|s| {
            // The chunk being sent travels to the sender thread and back, so the borrow checker
            // sees that this thread never touches it meanwhile.
            let (job_tx, job_rx) = mpsc::channel::<(Option<OpHeader>, &'c mut [T])>();
            let (done_tx, done_rx) = mpsc::channel::<(&'c mut [T], std::io::Result<()>)>();
            s.spawn(move || {
                for (header, data) in job_rx {
                    let r = send(right, header.as_ref(), data);
                    let failed = r.is_err();
                    // Report before closing, so the receiving side finds the real cause.
                    if done_tx.send((data, r)).is_err() || failed {
                        closer.close();
                        break;
                    }
                }
            });
            let stopped = || internal("the sender thread stopped");
            let result = (|| {
                for (i, step) in schedule.steps().enumerate() {
                    let out = chunks[step.send]
                        .take()
                        .ok_or_else(|| internal("send chunk missing"))?;
                    job_tx
                        .send(((i == 0).then_some(self.header), out))
                        .map_err(|_| stopped())?;
                    if let Err(e) = self.receive(left, i == 0, &step, chunks, scratch) {
                        // A failed send shuts the sockets, which also ends the receive: blame
                        // the send, which happened first.
                        if let Ok((_, Err(sent))) = done_rx.try_recv() {
                            return Err(RingError::from_io(
                                self.right,
                                self.timeout,
                                "sending",
                                sent,
                            ));
                        }
                        return Err(e);
                    }
                    let (back, sent) = done_rx.recv().map_err(|_| stopped())?;
                    sent.map_err(|e| RingError::from_io(self.right, self.timeout, "sending", e))?;
                    chunks[step.send] = Some(back);
                }
                Ok(())
            })();
            if result.is_err() {
                // Unblock the sender thread (it may sit in a write to a silent peer) so the
                // scope can end now rather than after the write timeout.
                closer.close();
            }
            result
        })
    }

    fn receive(
        &self,
        left: &mut TcpStream,
        first: bool,
        step: &Step,
        chunks: &mut [Option<&mut [T]>],
        scratch: &mut [T],
    ) -> Result<(), RingError> {
        let io = |e| RingError::from_io(self.left, self.timeout, "receiving", e);
        if first {
            let mut h = [0u8; HEADER_LEN];
            left.read_exact(&mut h).map_err(io)?;
            let theirs = OpHeader::decode(&h).map_err(|msg| RingError::Desync {
                peer: self.left.clone(),
                msg,
            })?;
            if theirs != self.header {
                return Err(RingError::Desync {
                    peer: self.left.clone(),
                    msg: format!(
                        "it sent {}, this rank is running {}",
                        theirs.describe(),
                        self.header.describe()
                    ),
                });
            }
        }
        let dst = chunks[step.recv]
            .as_deref_mut()
            .ok_or_else(|| internal("receive chunk missing"))?;
        if step.add {
            for part in dst.chunks_mut(scratch.len().max(1)) {
                let seg = &mut scratch[..part.len()];
                left.read_exact(bytemuck::cast_slice_mut(seg)).map_err(io)?;
                for (d, s) in part.iter_mut().zip(seg.iter()) {
                    *d = *d + *s;
                }
            }
        } else {
            left.read_exact(bytemuck::cast_slice_mut(dst)).map_err(io)?;
        }
        if step.owns
            && let Some(div) = self.divisor
        {
            dst.iter_mut().for_each(|x| *x = *x / div);
        }
        Ok(())
    }
}

fn send<T: Elem>(s: &mut TcpStream, header: Option<&OpHeader>, data: &[T]) -> std::io::Result<()> {
    if let Some(h) = header {
        s.write_all(&h.encode())?;
    }
    s.write_all(bytemuck::cast_slice(data))
}
