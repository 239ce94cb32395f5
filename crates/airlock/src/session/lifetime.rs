//! When a session ends by itself: the pure decision its watchdog goes by.
//!
//! A session is idle from the end of its last call (or its start) and
//! never while a call runs; it expires after [`Activity::idle_timeout`]
//! of idleness, or [`Activity::max_lifetime`] after it started, whichever
//! comes first (the lifetime also cuts a running call).

use crate::close::CloseReason;
use std::time::{Duration, Instant, SystemTime};

/// What the watchdog should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Close the session for this reason.
    Expired(CloseReason),
    /// Look again at this instant (or when a call ends).
    CheckAt(Instant),
}

/// A session's clock: when it started, when it was last used, whether a
/// call runs.
#[derive(Debug, Clone)]
pub(crate) struct Activity {
    started: Instant,
    last_used: Instant,
    last_used_wall: SystemTime,
    calls: u32,
    idle_timeout: Duration,
    max_lifetime: Duration,
}

impl Activity {
    /// A session started at `now` (`wall`: the same moment on the wall
    /// clock).
    pub(crate) fn new(
        now: Instant,
        wall: SystemTime,
        idle_timeout: Duration,
        max_lifetime: Duration,
    ) -> Self {
        Self {
            started: now,
            last_used: now,
            last_used_wall: wall,
            calls: 0,
            idle_timeout,
            max_lifetime,
        }
    }

    /// A call started: the session is not idle until it ends.
    pub(crate) fn begin_call(&mut self) {
        self.calls += 1;
    }

    /// A call ended at `now`: the idle clock restarts.
    pub(crate) fn end_call(&mut self, now: Instant, wall: SystemTime) {
        self.calls = self.calls.saturating_sub(1);
        self.last_used = now;
        self.last_used_wall = wall;
    }

    /// When a call last ended, on the wall clock.
    pub(crate) fn last_used_wall(&self) -> SystemTime {
        self.last_used_wall
    }

    /// Whether the session has expired at `now`, else when to look again.
    pub(crate) fn verdict(&self, now: Instant) -> Verdict {
        let end_of_life = self.started + self.max_lifetime;
        if now >= end_of_life {
            return Verdict::Expired(CloseReason::MaxLifetime);
        }
        if self.calls > 0 {
            return Verdict::CheckAt(end_of_life);
        }
        let idle_end = self.last_used + self.idle_timeout;
        if now >= idle_end {
            return Verdict::Expired(CloseReason::IdleTimeout);
        }
        Verdict::CheckAt(idle_end.min(end_of_life))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(600);
    const LIFE: Duration = Duration::from_secs(3600);

    fn fresh(now: Instant) -> Activity {
        Activity::new(now, SystemTime::now(), IDLE, LIFE)
    }

    #[test]
    fn an_unused_session_expires_at_its_idle_timeout() {
        let t0 = Instant::now();
        let a = fresh(t0);
        assert_eq!(a.verdict(t0), Verdict::CheckAt(t0 + IDLE));
        assert_eq!(
            a.verdict(t0 + IDLE),
            Verdict::Expired(CloseReason::IdleTimeout)
        );
    }

    #[test]
    fn a_call_restarts_the_idle_clock_when_it_ends() {
        let t0 = Instant::now();
        let mut a = fresh(t0);
        a.begin_call();
        a.end_call(t0 + IDLE / 2, SystemTime::now());
        assert_eq!(a.verdict(t0 + IDLE), Verdict::CheckAt(t0 + IDLE / 2 + IDLE));
    }

    #[test]
    fn a_running_call_is_never_idle_but_the_lifetime_cuts_it() {
        let t0 = Instant::now();
        let mut a = fresh(t0);
        a.begin_call();
        assert_eq!(a.verdict(t0 + IDLE * 2), Verdict::CheckAt(t0 + LIFE));
        assert_eq!(
            a.verdict(t0 + LIFE),
            Verdict::Expired(CloseReason::MaxLifetime)
        );
    }

    #[test]
    fn the_lifetime_wins_over_a_later_idle_deadline() {
        let t0 = Instant::now();
        let mut a = Activity::new(t0, SystemTime::now(), LIFE, IDLE);
        assert_eq!(a.verdict(t0), Verdict::CheckAt(t0 + IDLE));
        a.begin_call();
        a.end_call(t0 + IDLE - Duration::from_secs(1), SystemTime::now());
        assert_eq!(
            a.verdict(t0 + IDLE),
            Verdict::Expired(CloseReason::MaxLifetime)
        );
    }

    #[test]
    fn close_reasons_read_as_sentences() {
        assert_eq!(
            CloseReason::IdleTimeout.to_string(),
            "it was idle for longer than its idle timeout"
        );
        assert_eq!(
            serde_json::to_value(CloseReason::MaxLifetime).ok(),
            Some(serde_json::json!("max_lifetime"))
        );
    }
}
