//! `reseed`: after a restore from a memory template, before any user code,
//! the host's fresh entropy goes into the kernel's pool and the host's wall
//! clock becomes the guest's (`docs/protocol.md`, "reseed").
//!
//! Every clone of a template starts with the template's random state and
//! the clock it was saved with; this is what makes clones differ and tell
//! the time. The persistent interpreters a template holds are reseeded
//! after the kernel ([`crate::repl::Repls::reseed`]).
//!
//! A template's clock runs [`TEMPLATE_CLOCK_LAG`] behind from its warm-up
//! to its save ([`lag_clock_for_template`], `warm_repl` with
//! `for_template`): OpenSSL's DRBGs (Node's `crypto`) reseed themselves
//! from the kernel on their first draw once the clock is more than their
//! reseed interval (an hour at most) away from their last seeding, so a
//! clone, whose clock the reseed sets to the host's, reseeds every DRBG
//! the template's interpreter holds from its own freshly reseeded kernel.

use crate::error::AgentError;
use airlock_protocol::{EventBody, MIN_RESEED_ENTROPY_BYTES};
use airlock_sys_util::IoError;
use nix::sys::time::TimeSpec;
use nix::time::{clock_gettime, clock_settime, ClockId};
use std::os::fd::AsFd;
use std::time::Duration;

fn io(action: &'static str, path: &str, source: std::io::Error) -> AgentError {
    AgentError::from(IoError::new(action, path.to_owned(), source))
}

/// Where the entropy goes.
const URANDOM: &str = "/dev/urandom";

/// Credits `entropy` to the kernel's pool and sets `CLOCK_REALTIME` to
/// `unix_time_ns`.
///
/// # Errors
/// [`AgentError::InvalidRequest`] for too little entropy; [`AgentError::Io`]
/// when the kernel refuses either step.
pub(crate) fn reseed(entropy: &[u8], unix_time_ns: u64) -> Result<EventBody, AgentError> {
    check_entropy(entropy)?;
    let urandom = std::fs::OpenOptions::new()
        .write(true)
        .open(URANDOM)
        .map_err(|e| io("open", URANDOM, e))?;
    crate::sys::add_entropy(urandom.as_fd(), entropy)
        .map_err(|e| io("RNDADDENTROPY", URANDOM, e))?;
    // Crediting alone does not change what getrandom returns until the
    // kernel's next scheduled reseed: force it.
    crate::sys::reseed_crng(urandom.as_fd()).map_err(|e| io("RNDRESEEDCRNG", URANDOM, e))?;
    let before = clock_gettime(ClockId::CLOCK_REALTIME)
        .map_err(|e| io("read the clock", "CLOCK_REALTIME", e.into()))?;
    let target = Duration::from_nanos(unix_time_ns);
    clock_settime(ClockId::CLOCK_REALTIME, TimeSpec::from_duration(target))
        .map_err(|e| io("set the clock", "CLOCK_REALTIME", e.into()))?;
    Ok(EventBody::Reseeded {
        entropy_bytes: entropy.len() as u64,
        clock_step_ms: clock_step_ms(Duration::from(before), target),
    })
}

/// How far a template's clock is set back before its interpreter starts:
/// more than the longest time-based reseed interval of OpenSSL's DRBGs
/// (an hour for the primary one, seven minutes for the others), with room
/// for the host's clock to be corrected backwards between the template's
/// build and a clone's restore.
pub(crate) const TEMPLATE_CLOCK_LAG: Duration = Duration::from_secs(24 * 60 * 60);

/// Sets `CLOCK_REALTIME` [`TEMPLATE_CLOCK_LAG`] back, for a VM about to be
/// saved as a template (its clones' reseed sets the real time). Returns
/// the step in milliseconds (negative).
///
/// # Errors
/// [`AgentError::Io`] when the clock cannot be read or set.
pub(crate) fn lag_clock_for_template() -> Result<i64, AgentError> {
    let now = clock_gettime(ClockId::CLOCK_REALTIME)
        .map_err(|e| io("read the clock", "CLOCK_REALTIME", e.into()))?;
    let now = Duration::from(now);
    let target = lagged(now);
    clock_settime(ClockId::CLOCK_REALTIME, TimeSpec::from_duration(target))
        .map_err(|e| io("set the clock", "CLOCK_REALTIME", e.into()))?;
    Ok(clock_step_ms(now, target))
}

/// `now` less [`TEMPLATE_CLOCK_LAG`], never before the epoch.
fn lagged(now: Duration) -> Duration {
    now.saturating_sub(TEMPLATE_CLOCK_LAG)
}

/// Refuses fewer than [`MIN_RESEED_ENTROPY_BYTES`] bytes.
fn check_entropy(entropy: &[u8]) -> Result<(), AgentError> {
    if entropy.len() < MIN_RESEED_ENTROPY_BYTES {
        return Err(AgentError::InvalidRequest(format!(
            "reseed with {} bytes of entropy: send at least {MIN_RESEED_ENTROPY_BYTES}",
            entropy.len()
        )));
    }
    Ok(())
}

/// How far the clock moves from `before` to `after`, in milliseconds
/// (positive: forward), saturating.
fn clock_step_ms(before: Duration, after: Duration) -> i64 {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    if after >= before {
        ms(after - before)
    } else {
        -ms(before - after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fewer_than_32_bytes_of_entropy_are_refused_before_anything_changes() {
        let err = reseed(&[7u8; 31], 0).unwrap_err();
        assert!(matches!(err, AgentError::InvalidRequest(_)), "{err}");
        assert!(err.to_string().contains("at least 32"), "{err}");
        check_entropy(&[7u8; 32]).unwrap();
    }

    #[test]
    fn a_template_clock_lags_a_day_which_is_past_every_drbg_reseed_interval() {
        let s = Duration::from_secs;
        // OpenSSL's primary DRBG reseeds after an hour, the others after 7 min.
        assert!(TEMPLATE_CLOCK_LAG > s(60 * 60));
        assert_eq!(lagged(s(1_800_000_000)), s(1_800_000_000 - 86_400));
        assert_eq!(lagged(s(5)), Duration::ZERO);
        assert_eq!(clock_step_ms(s(100_000), lagged(s(100_000))), -86_400_000);
    }

    #[test]
    fn the_clock_step_is_signed_milliseconds() {
        let s = Duration::from_secs;
        assert_eq!(clock_step_ms(s(100), s(86_500)), 86_400_000);
        assert_eq!(clock_step_ms(s(10), s(9)), -1000);
        assert_eq!(clock_step_ms(s(5), s(5)), 0);
    }
}
