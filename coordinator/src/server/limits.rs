//! Rate limits per credential at the API's edge, so that one user's script or one worker's
//! runaway rank cannot fill the log or the records store for everyone: submissions per user
//! (administrators are exempt, as a cluster's operators are), log lines per worker. A
//! submission over the limit is refused (`RESOURCE_EXHAUSTED`, one line); log lines over it
//! are dropped and the job's log says how many.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::model::WorkerId;

/// The limits a coordinator enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// Submissions per second per user, with bursts of ten seconds' worth.
    pub submits_per_second: u32,
    /// Log lines per second per worker, with bursts of ten seconds' worth.
    pub log_lines_per_second: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            submits_per_second: 50,
            log_lines_per_second: 20_000,
        }
    }
}

type Keyed<K, C> = RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The limiters, on the system's clock (a test's own clock in the tests).
pub(crate) struct Limiters<C: Clock = DefaultClock> {
    pub limits: RateLimits,
    submits: Keyed<String, C>,
    log_lines: Keyed<WorkerId, C>,
}

fn quota(per_second: u32) -> Quota {
    let rate = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(per_second.max(1).saturating_mul(10)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

impl Limiters {
    pub fn new(limits: RateLimits) -> Limiters {
        Limiters::with_clock(limits, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limiters<C> {
    pub fn with_clock(limits: RateLimits, clock: C) -> Limiters<C> {
        Limiters {
            limits,
            submits: RateLimiter::dashmap_with_clock(
                quota(limits.submits_per_second),
                clock.clone(),
            ),
            log_lines: RateLimiter::dashmap_with_clock(quota(limits.log_lines_per_second), clock),
        }
    }

    /// Whether `user` may submit one more job now.
    pub fn submit(&self, user: &str) -> bool {
        self.submits.check_key(&user.to_string()).is_ok()
    }

    /// How many of `n` lines `worker` may ship now (the rest are dropped).
    pub fn log_lines(&self, worker: WorkerId, n: usize) -> usize {
        let mut allowed = 0;
        // One at a time: a batch larger than the burst is partly allowed, not refused whole.
        while allowed < n && self.log_lines.check_key(&worker).is_ok() {
            allowed += 1;
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use governor::clock::FakeRelativeClock;
    use std::time::Duration;

    #[test]
    fn each_key_gets_its_own_burst_and_the_rate_refills_it() {
        let clock = FakeRelativeClock::default();
        let l = Limiters::with_clock(
            RateLimits {
                submits_per_second: 2,
                log_lines_per_second: 5,
            },
            clock.clone(),
        );
        assert_eq!((0..100).filter(|_| l.submit("alice")).count(), 20);
        assert!(l.submit("bob"), "bob has a burst of his own");
        assert_eq!(l.log_lines(WorkerId(1), 1000), 50);
        assert_eq!(l.log_lines(WorkerId(2), 10), 10);
        clock.advance(Duration::from_secs(1));
        assert_eq!((0..100).filter(|_| l.submit("alice")).count(), 2);
        assert_eq!(l.log_lines(WorkerId(1), 1000), 5);
    }
}
