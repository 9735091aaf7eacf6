//! Stopping a running training loop from another thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Asks [`super::Trainer::run`] to stop before its next step. The loop then returns
/// [`crate::EngineError::Stopped`] like any other error, so everything the trainer owns (the
/// ring's sockets, an NCCL communicator) is closed on the way out rather than cut off by a
/// process exit. Clones share the one token.
#[derive(Clone, Debug, Default)]
pub struct StopToken(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    stopped: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl StopToken {
    pub fn new() -> StopToken {
        StopToken::default()
    }

    /// Asks the loop to stop; the first reason given is the one reported.
    pub fn stop(&self, reason: impl Into<String>) {
        let mut r = self.0.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason.into());
        }
        self.0.stopped.store(true, Ordering::Release);
    }

    /// Why the loop was asked to stop, once it was.
    pub fn reason(&self) -> Option<String> {
        if !self.0.stopped.load(Ordering::Acquire) {
            return None;
        }
        self.0
            .reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
