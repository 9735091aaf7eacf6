//! Submitting a job so that a retry never creates a second one: every submission carries a
//! request id chosen once, and transient failures (the coordinator restarting, a connection
//! cut after the job was committed but before the answer came back) are retried with the same
//! id, which the coordinator answers with the job the first try created.

use std::time::{Duration, Instant};

use crate::Channel;
use convoy_proto::v1::SubmitJobRequest;
use convoy_proto::v1::convoy_client::ConvoyClient;
use tonic::{Code, Status};

/// A fresh request id: 128 random bits in hex.
pub fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Whether a failed call may have failed for a reason that goes away on its own (the
/// coordinator unreachable or restarting), so sending it again is right.
pub fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

/// Submits `request` (giving it a request id if it has none) and returns the job id, retrying
/// transient failures with backoff for up to `retry_for`; `on_retry` hears about each one.
pub async fn submit_with_retry(
    client: &mut ConvoyClient<Channel>,
    mut request: SubmitJobRequest,
    retry_for: Duration,
    mut on_retry: impl FnMut(&Status, Duration),
) -> Result<String, Status> {
    if request.request_id.is_empty() {
        request.request_id = new_request_id();
    }
    let deadline = Instant::now() + retry_for;
    let mut delay = Duration::from_millis(100);
    loop {
        match client.submit_job(request.clone()).await {
            Ok(r) => return Ok(r.into_inner().job_id),
            Err(s) if is_transient(&s) && Instant::now() + delay < deadline => {
                on_retry(&s, delay);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(s) => return Err(s),
        }
    }
}
