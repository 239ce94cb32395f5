//! `airlock doctor`: prints the orchestrator's host checks
//! ([`airlock::doctor::checks`]) and what to fix; exit status 0 when
//! `airlock run` can work, else 1.

use crate::process::{self, Interrupts};
use airlock::doctor::Check;

/// Runs `airlock doctor`; returns the exit status. A stop signal kills
/// the probes' children (they die as their futures drop).
pub async fn run(interrupts: &mut Interrupts) -> i32 {
    process::unless_interrupted(doctor(), interrupts).await
}

async fn doctor() -> i32 {
    let checks = airlock::doctor::checks().await;
    print!("{}", report(&checks));
    if checks.iter().all(|c| c.ok) {
        0
    } else {
        1
    }
}

/// The report: one line per check, its fix under it (pure).
fn report(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        let mark = if c.ok { "ok  " } else { "FAIL" };
        out.push_str(&format!("{mark} {:width$}  {}\n", c.name, c.found));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("     {:width$}  fix: {fix}\n", ""));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_check_is_a_line_aligned_on_the_longest_name_with_its_fix_under_it() {
        let checks = [
            Check {
                name: "qemu",
                ok: true,
                found: "/usr/bin/qemu-system-x86_64 (7.2.0)".into(),
                fix: None,
            },
            Check {
                name: "limits",
                ok: false,
                found: "probe failed".into(),
                fix: Some("run as root".into()),
            },
        ];
        assert_eq!(
            report(&checks),
            "ok   qemu    /usr/bin/qemu-system-x86_64 (7.2.0)\n\
             FAIL limits  probe failed\n\
             \x20            fix: run as root\n"
        );
    }
}
