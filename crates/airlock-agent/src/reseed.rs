//! `reseed`: after a restore from a memory template, before any user code,
//! the host's fresh entropy goes into the kernel's pool and the host's wall
//! clock becomes the guest's (`docs/protocol.md`, "reseed").
//!
//! Every clone of a template starts with the template's random state and
//! the clock it was saved with; this is what makes clones differ and tell
//! the time. Interpreters already running in the guest would keep their
//! own seeded state: templates hold none today (each exec starts a new
//! process, which seeds from the kernel), so there is nothing else to
//! reseed until persistent interpreters exist.

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
    fn the_clock_step_is_signed_milliseconds() {
        let s = Duration::from_secs;
        assert_eq!(clock_step_ms(s(100), s(86_500)), 86_400_000);
        assert_eq!(clock_step_ms(s(10), s(9)), -1000);
        assert_eq!(clock_step_ms(s(5), s(5)), 0);
    }
}
