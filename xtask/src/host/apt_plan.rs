//! Planning a package install before making it: what apt would do, checked
//! against what set-up allows.
//!
//! `apt-get install -y` may *remove* packages to satisfy a request: on a
//! fresh machine of the kind Airlock is developed on, `qemu-utils` is a 10.0
//! backport while Debian 12 offers `qemu-system-x86` 7.2 only, and asking for
//! the latter removed the former (and so `qemu-img`). Set-up therefore:
//!
//! 1. reads `apt-cache policy` of the QEMU packages and picks one version
//!    that both `qemu-system-x86` and `qemu-utils` have ([`choose_qemu`]),
//!    pinning both to it in one transaction (an explicit downgrade when that
//!    is the only match);
//! 2. simulates the whole transaction with `apt-get -s` and refuses it when
//!    apt would remove a package, or downgrade one it was not asked to
//!    ([`Simulation::check`]), naming the conflict and the command that
//!    resolves it;
//! 3. installs with `--no-remove`, so that even a plan that changed between
//!    the simulation and the install cannot remove anything.
//!
//! Every apt call goes through an [`Apt`] that may point at another dpkg
//! status file (`-o Dir::State::status=FILE`): that is how a test plans
//! against the shape of a fresh machine on a machine that is not fresh.
//! Parsing and choosing are pure and tested on text.

use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

/// The Debian package of `qemu-system-x86_64`.
pub const QEMU_SYSTEM: &str = "qemu-system-x86";
/// The Debian package of `qemu-img`.
pub const QEMU_UTILS: &str = "qemu-utils";

/// How set-up calls apt: on this machine's package state, or on another
/// dpkg status file (for planning tests).
#[derive(Debug, Clone, Default)]
pub struct Apt {
    /// `Dir::State::status` to plan against; `None`: the system's.
    pub status_file: Option<PathBuf>,
}

impl Apt {
    /// A command of `program` (`apt-get`, `apt-cache`) with this context's
    /// options and a stable, non-interactive environment.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        if let Some(status) = &self.status_file {
            cmd.arg("-o")
                .arg(format!("Dir::State::status={}", status.display()));
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C");
        cmd
    }

    /// `apt-cache policy PACKAGE`, parsed.
    ///
    /// # Errors
    /// When apt-cache cannot run.
    pub fn policy(&self, package: &str) -> Result<Policy> {
        let out = self
            .command("apt-cache")
            .args(["policy", package])
            .output()
            .context("cannot run apt-cache (is this a Debian host?)")?;
        Ok(Policy::parse(&String::from_utf8_lossy(&out.stdout)))
    }

    /// `apt-get -s install` of `request`, parsed.
    ///
    /// # Errors
    /// When apt-get cannot run or refuses the request (its message is kept).
    pub fn simulate(&self, request: &InstallRequest) -> Result<Simulation> {
        let out = self
            .command("apt-get")
            .arg("-s")
            .args(request.apt_args())
            .output()
            .context("cannot run apt-get (is this a Debian host?)")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "apt cannot plan `apt-get install {}`:\n{}{}",
                request.describe(),
                stdout.trim_end(),
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
        }
        Ok(Simulation::parse(&stdout))
    }

    /// Installs `request` for real, never removing a package.
    ///
    /// # Errors
    /// When apt-get fails.
    pub fn install(&self, request: &InstallRequest) -> Result<()> {
        let mut cmd = self.command("apt-get");
        cmd.args(["-y", "-q", "--no-remove"])
            .args(request.apt_args());
        super::run_checked(&mut cmd)
    }
}

/// What `apt-cache policy` says of one package.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// The installed version, if any.
    pub installed: Option<String>,
    /// The version `apt-get install` would pick, if any.
    pub candidate: Option<String>,
    /// Versions in apt's order (newest first) with whether an archive
    /// offers them (a version known only from the dpkg status is not).
    pub versions: Vec<(String, bool)>,
}

impl Policy {
    /// Parses the output of `apt-cache policy NAME` (one package).
    pub fn parse(text: &str) -> Self {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .map(str::trim)
                .filter(|v| !v.is_empty() && *v != "(none)")
                .map(str::to_owned)
        };
        let mut versions: Vec<(String, bool)> = Vec::new();
        let mut in_table = false;
        for line in text.lines() {
            if line.trim() == "Version table:" {
                in_table = true;
                continue;
            }
            if !in_table {
                continue;
            }
            let indent = line.len() - line.trim_start().len();
            let trimmed = line.trim().trim_start_matches("*** ");
            let tokens: Vec<&str> = trimmed.split_whitespace().collect();
            if indent <= 5 && tokens.len() == 2 && tokens[1].parse::<i32>().is_ok() {
                versions.push((tokens[0].to_owned(), false));
            } else if let (Some(last), Some(source)) = (versions.last_mut(), tokens.get(1)) {
                // `500 http://deb.debian.org/debian bookworm/main ...` is an
                // archive; `100 /var/lib/dpkg/status` is the installed state.
                if !source.starts_with('/') {
                    last.1 = true;
                }
            }
        }
        Self {
            installed: field("Installed:"),
            candidate: field("Candidate:"),
            versions,
        }
    }

    /// Whether an archive offers `version`.
    pub fn offers(&self, version: &str) -> bool {
        self.versions.iter().any(|(v, ok)| v == version && *ok)
    }
}

/// One install transaction: package names, some pinned to a version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallRequest {
    /// `name` or `name=version`, in a stable order.
    pub packages: BTreeSet<String>,
    /// Packages pinned below their installed version, on purpose.
    pub downgrades: BTreeSet<String>,
}

impl InstallRequest {
    /// Whether there is nothing to install.
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty()
    }

    /// The arguments after `apt-get [-s]`.
    fn apt_args(&self) -> Vec<String> {
        let mut args = vec!["install".to_owned(), "--no-install-recommends".to_owned()];
        if !self.downgrades.is_empty() {
            args.push("--allow-downgrades".to_owned());
        }
        args.extend(self.packages.iter().cloned());
        args
    }

    /// The request as a user would type it after `apt-get install`.
    pub fn describe(&self) -> String {
        self.apt_args()[1..].join(" ")
    }
}

/// The QEMU packages to install so that `qemu-img` and
/// `qemu-system-x86_64` come from one QEMU version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuChoice {
    /// `name=version` pins to add to the transaction (empty: nothing to do).
    pub pins: Vec<String>,
    /// Packages those pins move below their installed version.
    pub downgrades: Vec<String>,
    /// What set-up says about it, for the user (empty when nothing unusual).
    pub notice: String,
}

/// Picks one version for both QEMU packages: the installed system emulator's
/// when there is one, else the newest version that the archives offer for
/// `qemu-system-x86` and that `qemu-utils` has (installed, or offered).
///
/// # Errors
/// When no version fits both, with the versions seen and what to do.
pub fn choose_qemu(system: &Policy, utils: &Policy) -> Result<QemuChoice> {
    let utils_has = |v: &str| utils.installed.as_deref() == Some(v) || utils.offers(v);
    let target = match &system.installed {
        Some(installed) => Some(installed.clone()).filter(|v| utils_has(v)),
        None => system
            .versions
            .iter()
            .find(|(v, offered)| *offered && utils_has(v))
            .map(|(v, _)| v.clone()),
    };
    let Some(version) = target else {
        bail!(
            "no QEMU version fits both {QEMU_SYSTEM} (installed: {}, offered: {}) and \
             {QEMU_UTILS} (installed: {}, offered: {}): qemu-img and qemu-system-x86_64 must \
             come from one QEMU. Install a matching pair yourself, e.g. \
             `apt-get install {QEMU_SYSTEM}=V {QEMU_UTILS}=V` with V from `apt-cache policy \
             {QEMU_SYSTEM} {QEMU_UTILS}`",
            system.installed.as_deref().unwrap_or("none"),
            offered_list(system),
            utils.installed.as_deref().unwrap_or("none"),
            offered_list(utils),
        );
    };
    let mut choice = QemuChoice {
        pins: Vec::new(),
        downgrades: Vec::new(),
        notice: String::new(),
    };
    if system.installed.as_deref() != Some(version.as_str()) {
        choice.pins.push(format!("{QEMU_SYSTEM}={version}"));
    }
    if utils.installed.as_deref() != Some(version.as_str()) {
        choice.pins.push(format!("{QEMU_UTILS}={version}"));
        if let Some(installed) = &utils.installed {
            // The archives' versions are listed newest first: a target after
            // the installed one in that order is older.
            if is_older_in(utils, &version, installed) {
                choice.downgrades.push(QEMU_UTILS.to_owned());
                choice.notice = format!(
                    "{QEMU_UTILS} {installed} is newer than any {QEMU_SYSTEM} this host's \
                     archives offer; installing both at {version} in one transaction \
                     ({QEMU_UTILS} is downgraded so that qemu-img and QEMU match)"
                );
            }
        }
    }
    Ok(choice)
}

/// Whether `a` comes after `b` in `policy`'s version table (newest first),
/// i.e. `a` is older. Unknown versions are not older.
fn is_older_in(policy: &Policy, a: &str, b: &str) -> bool {
    let pos = |v: &str| policy.versions.iter().position(|(x, _)| x == v);
    matches!((pos(a), pos(b)), (Some(pa), Some(pb)) if pa > pb)
}

fn offered_list(policy: &Policy) -> String {
    let offered: Vec<&str> = policy
        .versions
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(v, _)| v.as_str())
        .collect();
    if offered.is_empty() {
        "none (run `apt-get update`?)".to_owned()
    } else {
        offered.join(", ")
    }
}

/// What `apt-get -s install` would do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Simulation {
    /// Packages it would install or upgrade, with the version (`Inst` lines).
    pub installs: Vec<(String, String)>,
    /// Packages it would remove (`Remv` lines).
    pub removals: Vec<String>,
    /// Packages it would downgrade (its `DOWNGRADED` list).
    pub downgrades: Vec<String>,
    /// Held packages it would change (its `held packages` list).
    pub held_changes: Vec<String>,
}

impl Simulation {
    /// Parses `apt-get -s install ...` output.
    pub fn parse(text: &str) -> Self {
        let mut sim = Self::default();
        let mut section: Option<&str> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("Inst ") {
                // `Inst NAME [OLD] (NEW ARCHIVE [ARCH])`
                let name = rest.split_whitespace().next().unwrap_or_default();
                let version = rest
                    .split_once('(')
                    .and_then(|(_, v)| v.split_whitespace().next())
                    .unwrap_or_default();
                sim.installs.push((name.to_owned(), version.to_owned()));
                section = None;
            } else if let Some(rest) = line.strip_prefix("Remv ") {
                let name = rest.split_whitespace().next().unwrap_or_default();
                if !sim.removals.iter().any(|r| r == name) {
                    sim.removals.push(name.to_owned());
                }
                section = None;
            } else if line.starts_with("The following") {
                section = if line.contains("DOWNGRADED") {
                    Some("downgraded")
                } else if line.contains("REMOVED") {
                    Some("removed")
                } else if line.contains("held packages will be changed") {
                    Some("held")
                } else {
                    Some("other")
                };
            } else if line.starts_with("  ") && section.is_some() {
                let names = line.split_whitespace().map(str::to_owned);
                match section {
                    Some("downgraded") => sim.downgrades.extend(names),
                    Some("removed") => {
                        for name in names {
                            if !sim.removals.contains(&name) {
                                sim.removals.push(name);
                            }
                        }
                    }
                    Some("held") => sim.held_changes.extend(names),
                    _ => {}
                }
            } else {
                section = None;
            }
        }
        sim
    }

    /// The version it would install of `package`.
    #[cfg(test)]
    pub fn version_of(&self, package: &str) -> Option<&str> {
        self.installs
            .iter()
            .find(|(n, _)| n == package)
            .map(|(_, v)| v.as_str())
    }

    /// Refuses a plan that removes a package, changes a held one, or
    /// downgrades one that `request` did not pin down on purpose.
    ///
    /// # Errors
    /// Naming each conflicting package and the command that resolves it.
    pub fn check(&self, request: &InstallRequest) -> Result<()> {
        let surprise_downgrades: Vec<&String> = self
            .downgrades
            .iter()
            .filter(|d| !request.downgrades.contains(*d))
            .collect();
        if self.removals.is_empty()
            && surprise_downgrades.is_empty()
            && self.held_changes.is_empty()
        {
            return Ok(());
        }
        let mut problems = Vec::new();
        if !self.removals.is_empty() {
            problems.push(format!("remove {}", self.removals.join(", ")));
        }
        if !surprise_downgrades.is_empty() {
            let names: Vec<&str> = surprise_downgrades.iter().map(|s| s.as_str()).collect();
            problems.push(format!("downgrade {}", names.join(", ")));
        }
        if !self.held_changes.is_empty() {
            problems.push(format!("change held {}", self.held_changes.join(", ")));
        }
        bail!(
            "set-up stopped before changing anything: `apt-get install {}` would {}. \
             Resolve the conflict yourself (see `apt-get -s install {}`), e.g. install \
             versions of these packages that fit together, then run this command again",
            request.describe(),
            problems.join(" and "),
            request.describe(),
        )
    }
}

/// The whole set-up transaction for `packages` (those whose probes failed):
/// QEMU's two packages kept at one version, planned and checked.
///
/// # Errors
/// When apt cannot plan it, or the plan would remove or downgrade a package
/// set-up did not choose to.
pub fn plan(apt: &Apt, packages: &[&str]) -> Result<(InstallRequest, Simulation, String)> {
    let mut request = InstallRequest::default();
    let mut notice = String::new();
    let wants_qemu = packages
        .iter()
        .any(|p| *p == QEMU_SYSTEM || *p == QEMU_UTILS);
    for package in packages {
        if *package != QEMU_SYSTEM && *package != QEMU_UTILS {
            request.packages.insert((*package).to_owned());
        }
    }
    if wants_qemu {
        let choice = choose_qemu(&apt.policy(QEMU_SYSTEM)?, &apt.policy(QEMU_UTILS)?)?;
        request.packages.extend(choice.pins);
        request.downgrades.extend(choice.downgrades);
        notice = choice.notice;
    }
    if request.is_empty() {
        return Ok((request, Simulation::default(), notice));
    }
    let simulation = apt.simulate(&request)?;
    simulation.check(&request)?;
    Ok((request, simulation, notice))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UTILS_BACKPORT: &str = "qemu-utils:
  Installed: 1:10.0.2+ds-2+deb13u1~bpo12+1
  Candidate: 1:10.0.2+ds-2+deb13u1~bpo12+1
  Version table:
 *** 1:10.0.2+ds-2+deb13u1~bpo12+1 100
        100 /var/lib/dpkg/status
     1:7.2+dfsg-7+deb12u18+b3 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
     1:7.2+dfsg-7+deb12u15 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
";

    const SYSTEM_OFFERED: &str = "qemu-system-x86:
  Installed: (none)
  Candidate: 1:7.2+dfsg-7+deb12u18+b3
  Version table:
     1:7.2+dfsg-7+deb12u18+b3 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
     1:7.2+dfsg-7+deb12u15 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
";

    #[test]
    fn policy_reads_installed_candidate_and_offered_versions() {
        let p = Policy::parse(UTILS_BACKPORT);
        assert_eq!(
            p.installed.as_deref(),
            Some("1:10.0.2+ds-2+deb13u1~bpo12+1")
        );
        assert_eq!(p.versions.len(), 3);
        assert!(!p.offers("1:10.0.2+ds-2+deb13u1~bpo12+1"), "status only");
        assert!(p.offers("1:7.2+dfsg-7+deb12u18+b3"));
    }

    #[test]
    fn policy_of_an_unknown_package_is_empty() {
        assert_eq!(Policy::parse(""), Policy::default());
        let none =
            Policy::parse("x:\n  Installed: (none)\n  Candidate: (none)\n  Version table:\n");
        assert_eq!(none.candidate, None);
        assert!(none.versions.is_empty());
    }

    #[test]
    fn a_backported_qemu_utils_is_pinned_down_to_the_system_emulator() {
        let choice = choose_qemu(
            &Policy::parse(SYSTEM_OFFERED),
            &Policy::parse(UTILS_BACKPORT),
        )
        .unwrap();
        assert_eq!(
            choice.pins,
            [
                "qemu-system-x86=1:7.2+dfsg-7+deb12u18+b3",
                "qemu-utils=1:7.2+dfsg-7+deb12u18+b3"
            ]
        );
        assert_eq!(choice.downgrades, ["qemu-utils"]);
        assert!(choice.notice.contains("downgraded"), "{}", choice.notice);
    }

    #[test]
    fn matching_installed_qemu_needs_nothing() {
        let installed = |name: &str| {
            Policy::parse(&format!(
                "{name}:\n  Installed: 1:7.2-1\n  Candidate: 1:7.2-1\n  Version table:\n *** 1:7.2-1 500\n        500 http://x/debian bookworm/main amd64 Packages\n        100 /var/lib/dpkg/status\n"
            ))
        };
        let choice = choose_qemu(&installed("qemu-system-x86"), &installed("qemu-utils")).unwrap();
        assert!(choice.pins.is_empty() && choice.downgrades.is_empty());
    }

    #[test]
    fn an_installed_emulator_pulls_qemu_utils_to_its_version() {
        let system = Policy::parse(
            "qemu-system-x86:\n  Installed: 1:7.2-1\n  Candidate: 1:7.2-1\n  Version table:\n *** 1:7.2-1 500\n        500 http://x/debian bookworm/main amd64 Packages\n",
        );
        let utils = Policy::parse(
            "qemu-utils:\n  Installed: (none)\n  Candidate: 1:7.2-1\n  Version table:\n     1:7.2-1 500\n        500 http://x/debian bookworm/main amd64 Packages\n",
        );
        let choice = choose_qemu(&system, &utils).unwrap();
        assert_eq!(choice.pins, ["qemu-utils=1:7.2-1"]);
        assert!(choice.downgrades.is_empty());
    }

    #[test]
    fn no_common_version_is_an_error_that_names_both_packages() {
        let utils = Policy::parse(
            "qemu-utils:\n  Installed: 1:10.0-1\n  Candidate: 1:10.0-1\n  Version table:\n *** 1:10.0-1 100\n        100 /var/lib/dpkg/status\n",
        );
        let err = choose_qemu(&Policy::parse(SYSTEM_OFFERED), &utils).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("qemu-system-x86") && text.contains("qemu-utils"),
            "{text}"
        );
        assert!(text.contains("apt-get install"), "{text}");
    }

    const SIM_REMOVES: &str = "Reading package lists...
The following packages will be REMOVED:
  qemu-utils
The following NEW packages will be installed:
  qemu-system-common qemu-system-x86
0 upgraded, 2 newly installed, 1 to remove and 0 not upgraded.
Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]
Inst qemu-system-common (1:7.2+dfsg-7+deb12u18+b3 Debian:12.15/oldstable [amd64])
Inst qemu-system-x86 (1:7.2+dfsg-7+deb12u18+b3 Debian:12.15/oldstable [amd64])
";

    const SIM_DOWNGRADES: &str = "The following packages will be DOWNGRADED:
  qemu-utils
0 upgraded, 2 newly installed, 1 downgraded, 0 to remove and 0 not upgraded.
Inst qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1] (1:7.2+dfsg-7+deb12u18+b3 Debian:12.15/oldstable [amd64])
Inst qemu-system-x86 (1:7.2+dfsg-7+deb12u18+b3 Debian:12.15/oldstable [amd64])
";

    #[test]
    fn simulation_reads_removals_installs_and_downgrades() {
        let sim = Simulation::parse(SIM_REMOVES);
        assert_eq!(sim.removals, ["qemu-utils"]);
        assert_eq!(
            sim.version_of("qemu-system-x86"),
            Some("1:7.2+dfsg-7+deb12u18+b3")
        );
        let sim = Simulation::parse(SIM_DOWNGRADES);
        assert_eq!(sim.downgrades, ["qemu-utils"]);
        assert_eq!(
            sim.version_of("qemu-utils"),
            Some("1:7.2+dfsg-7+deb12u18+b3")
        );
    }

    #[test]
    fn a_plan_that_removes_a_package_is_refused_with_the_conflict_named() {
        let request = InstallRequest {
            packages: ["qemu-system-x86".to_owned()].into(),
            downgrades: BTreeSet::new(),
        };
        let err = Simulation::parse(SIM_REMOVES).check(&request).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("remove qemu-utils"), "{text}");
        assert!(text.contains("before changing anything"), "{text}");
    }

    #[test]
    fn only_the_downgrades_set_up_chose_are_allowed() {
        let chosen = InstallRequest {
            packages: ["qemu-utils=1:7.2+dfsg-7+deb12u18+b3".to_owned()].into(),
            downgrades: ["qemu-utils".to_owned()].into(),
        };
        Simulation::parse(SIM_DOWNGRADES).check(&chosen).unwrap();
        let unchosen = InstallRequest {
            downgrades: BTreeSet::new(),
            ..chosen
        };
        let err = Simulation::parse(SIM_DOWNGRADES)
            .check(&unchosen)
            .unwrap_err();
        assert!(err.to_string().contains("downgrade qemu-utils"), "{err}");
    }

    #[test]
    fn downgrades_add_the_apt_flag() {
        let request = InstallRequest {
            packages: ["a".to_owned(), "b=1".to_owned()].into(),
            downgrades: ["b".to_owned()].into(),
        };
        assert_eq!(
            request.describe(),
            "--no-install-recommends --allow-downgrades a b=1"
        );
    }
}
