//! [`Channel`]: one channel to a set of coordinator replicas that follows the leader.
//!
//! Every call goes to the member believed to lead. A member that does not lead answers
//! `UNAVAILABLE` with the leader's address in [`LEADER_HEADER`]; the channel notes it, so the
//! caller's next try (every convoy client retries `UNAVAILABLE`: that is how they already
//! outlive a coordinator restart) goes to the leader. A member that cannot be reached, or that
//! knows no leader, moves the channel on to the next address. Clones share what was learnt,
//! so a worker's heartbeats, streams and its ranks' uploads all move together.

use std::future::poll_fn;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http::header::AUTHORIZATION;
use tonic::codegen::http::{HeaderValue, Request, Response};
use tonic::codegen::{BoxFuture, Service};
use tonic::transport::Channel as TonicChannel;

use crate::{ClientError, endpoint};

/// `Bearer TOKEN` as a header value; a token that cannot travel in a header is refused here,
/// in one line, rather than by every call.
pub fn bearer(token: &str) -> Result<HeaderValue, ClientError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|_| {
        ClientError::InvalidToken("it holds characters a gRPC header cannot carry".into())
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// The metadata key a member that does not lead names the leader's address in.
pub const LEADER_HEADER: &str = "x-convoy-leader";

/// gRPC's `UNAVAILABLE`, as it appears in a trailers-only response's headers.
const UNAVAILABLE: &str = "14";

#[derive(Clone)]
pub struct Channel {
    shared: Arc<RwLock<Members>>,
}

struct Members {
    /// (url, channel), in the order given; a leader learnt of that was not given is added.
    all: Vec<(String, TonicChannel)>,
    current: usize,
    /// `Bearer TOKEN`, sent with every call that carries no authorization of its own.
    credential: Option<HeaderValue>,
}

impl Channel {
    /// A lazy channel per address (nothing connects before the first call).
    pub(crate) fn lazy(urls: &[String]) -> Result<Channel, ClientError> {
        let mut all = vec![];
        for u in urls {
            all.push((u.clone(), endpoint(u)?.connect_lazy()));
        }
        Ok(Channel {
            shared: Arc::new(RwLock::new(Members {
                all,
                current: 0,
                credential: None,
            })),
        })
    }

    /// Makes `index` the member calls go to first, over `connected`, a channel already
    /// connected to it.
    pub(crate) fn prefer(&self, index: usize, connected: TonicChannel) {
        let mut m = self.write();
        if let Some(member) = m.all.get_mut(index) {
            member.1 = connected;
            m.current = index;
        }
    }

    /// Presents `token` with every call from now on (clones included: a worker's
    /// credential, learnt at registration, serves its heartbeats and streams alike).
    pub fn set_credential(&self, token: &str) -> Result<(), ClientError> {
        let value = bearer(token)?;
        self.write().credential = Some(value);
        Ok(())
    }

    /// The address calls go to now.
    pub fn current(&self) -> String {
        let m = self.read();
        m.all[m.current].0.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Members> {
        self.shared.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Members> {
        self.shared.write().unwrap_or_else(|e| e.into_inner())
    }

    fn pick(&self) -> (usize, TonicChannel, Option<HeaderValue>) {
        let m = self.read();
        (m.current, m.all[m.current].1.clone(), m.credential.clone())
    }

    /// Calls go to `url` from now on.
    fn follow(&self, url: &str) {
        let mut m = self.write();
        if let Some(i) = m.all.iter().position(|(u, _)| u == url) {
            m.current = i;
            return;
        }
        if let Ok(e) = endpoint(url) {
            m.all.push((url.to_string(), e.connect_lazy()));
            m.current = m.all.len() - 1;
        }
    }

    /// The member at `failed` did not answer usefully: move on, unless another call already
    /// did.
    fn skip(&self, failed: usize) {
        let mut m = self.write();
        if m.current == failed {
            m.current = (failed + 1) % m.all.len();
        }
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.read();
        f.debug_struct("Channel")
            .field("members", &m.all.iter().map(|(u, _)| u).collect::<Vec<_>>())
            .field("current", &m.current)
            .finish()
    }
}

impl Service<Request<Body>> for Channel {
    type Response = Response<Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the chosen member's, awaited in `call` once it is chosen.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let (index, mut channel, credential) = self.pick();
        if let Some(c) = credential {
            req.headers_mut().entry(AUTHORIZATION).or_insert(c);
        }
        let this = self.clone();
        Box::pin(async move {
            let r = match poll_fn(|cx| channel.poll_ready(cx)).await {
                Ok(()) => channel.call(req).await,
                Err(e) => Err(e),
            };
            match &r {
                Ok(resp) => {
                    let headers = resp.headers();
                    if let Some(url) = headers.get(LEADER_HEADER).and_then(|v| v.to_str().ok()) {
                        this.follow(url);
                    } else if headers.get("grpc-status").is_some_and(|v| v == UNAVAILABLE) {
                        this.skip(index);
                    }
                }
                Err(_) => this.skip(index),
            }
            r
        })
    }
}
