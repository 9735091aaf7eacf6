//! The services' way into the event loop.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tonic::Status;

use crate::log::codec::RecordOp;
use crate::model::JobId;
use crate::server::convert;
use crate::server::fail_stop::FailStop;
use crate::server::leadership::Leadership;
use crate::server::records::{Records, event_line};
use crate::server::request::{Request, View};

/// What both gRPC services share: the loop's request channel, the records store (read
/// directly by streams, which would otherwise hold the loop up), the heartbeat interval
/// workers are told, and the shutdown signal long streams end on.
#[derive(Clone)]
pub(crate) struct Handle {
    pub tx: std_mpsc::Sender<Request>,
    pub records: Arc<Records>,
    pub heartbeat_interval: Duration,
    /// Becomes true when the server is shutting down; long streams end then.
    pub stopping: watch::Receiver<bool>,
    pub fail_stop: FailStop,
    pub leadership: watch::Receiver<Leadership>,
    /// Records go through the replicated log (see `RecordOp`) instead of straight to the store.
    pub replicated: bool,
}

impl Handle {
    /// Sends the request `make` builds around a reply channel and waits for the answer.
    pub async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, Status> {
        self.serving()?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))?;
        // The loop drops a request it will not answer: it is stopping, or it no longer leads
        // (a proposal's outcome is then unknown here; submissions carry request ids for that).
        rx.await.map_err(|_| match self.serving() {
            Ok(()) => Status::unavailable("the coordinator is shutting down"),
            Err(refusal) => refusal,
        })
    }

    /// Appends records: straight to the store when alone; as a replica, through the log,
    /// answering once they are committed.
    pub async fn append_records(&self, ops: Vec<RecordOp>) -> Result<(), Status> {
        if !self.replicated {
            self.records.apply(&ops);
            return Ok(());
        }
        self.call(|reply| Request::Records { ops, reply })
            .await?
            .map_err(convert::status)
    }

    /// One of convoy's own job events, without waiting for it to be kept.
    pub fn event(&self, job: JobId, generation: u64, text: String) {
        let op = RecordOp::Log {
            job,
            line: event_line(generation, text),
        };
        if !self.replicated {
            self.records.apply(&[op]);
            return;
        }
        let (reply, _) = oneshot::channel();
        let _ = self.tx.send(Request::Records {
            ops: vec![op],
            reply,
        });
    }

    /// Refuses, naming the leader, unless this coordinator serves.
    pub fn serving(&self) -> Result<(), Status> {
        let l = self.leadership.borrow();
        if l.serving { Ok(()) } else { Err(l.refusal()) }
    }

    /// Runs `f` on this replica's state, leader or not (a replica storing its leader's
    /// checkpoint copies).
    pub async fn read_local<T: Send + 'static>(
        &self,
        f: impl FnOnce(&View<'_>) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let (reply, rx) = oneshot::channel();
        let request = Request::ReadLocal(Box::new(move |view| {
            let _ = reply.send(f(view));
        }));
        self.tx
            .send(request)
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))?;
        rx.await
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))
    }

    /// Runs `f` on the loop's current state.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&View<'_>) -> T + Send + 'static,
    ) -> Result<T, Status> {
        self.call(|reply| {
            Request::Read(Box::new(move |view| {
                let _ = reply.send(f(view));
            }))
        })
        .await
    }
}
