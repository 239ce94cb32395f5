//! The orchestrator's configuration: one typed struct with defaults,
//! validated once.

use crate::error::{Error, Result};
use airlock_sys_util::AirlockDirs;
use std::path::PathBuf;
use std::time::Duration;

/// Airlock's dirs from this process's environment (see
/// [`airlock_sys_util::dirs`] for the order); when none can be named (no
/// `HOME`, a relative override), a warning and a private dir under `/tmp`.
pub fn dirs() -> AirlockDirs {
    AirlockDirs::from_env().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "falling back to Airlock dirs under /tmp");
        let uid = nix::unistd::getuid();
        let cache = PathBuf::from(format!("/tmp/airlock-cache-{uid}"));
        AirlockDirs {
            images: cache.join("images"),
            probe: cache.join("probe"),
            bin: cache.join("bin"),
            run: PathBuf::from(format!("/tmp/airlock-{uid}")),
            cache,
        }
    })
}

/// The per-user cache dir (see [`dirs`]).
pub fn cache_dir() -> PathBuf {
    dirs().cache
}

/// The default dir for per-VM work dirs (see [`dirs`]).
pub fn default_run_dir() -> PathBuf {
    dirs().run
}

/// How the orchestrator runs VMs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the guest images are.
    pub images_dir: PathBuf,
    /// Where per-VM work dirs go.
    pub run_dir: PathBuf,
    /// At most this many VMs at once; more runs wait (backpressure).
    pub max_concurrent_vms: usize,
    /// Longest wait for a free VM slot before a boot fails.
    pub queue_timeout: Duration,
    /// Deadline from QEMU start to the agent's first answer, per attempt.
    pub boot_timeout: Duration,
    /// Boot attempts for transient failures (at least 1).
    pub boot_attempts: u32,
    /// Grace between SIGTERM and SIGKILL at teardown.
    pub kill_grace: Duration,
    /// Overlays kept ready per root disk in use (0: each VM creates its
    /// own, which suits one-shot commands). Default: one per VM slot, at
    /// most 8.
    pub overlay_pool_target: usize,
    /// Echo the guest console to stderr (kernel and init log).
    pub debug_console: bool,
    /// Test-only egress settings (fake resolver, private upstreams).
    pub egress_test: crate::network::EgressTestOverrides,
    /// Let the egress proxy connect to documentation addresses
    /// (`192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`),
    /// refused by default: for a host whose DNS answers public names with
    /// them. Default: [`ALLOW_DOC_RANGES_ENV`] is `1`.
    pub egress_allow_documentation_ranges: bool,
    /// Where memory templates are stored (`<cache>/templates`).
    pub templates_dir: PathBuf,
    /// Runs without a network restore from the memory template of their
    /// shape (built first when missing) instead of booting cold. Off by
    /// default for the library; `airlock run` turns it on (`--cold` off).
    pub restore_templates: bool,
    /// Where package layers are stored (`<cache>/packages`).
    pub packages_dir: PathBuf,
    /// Where the blank workspace disks are kept, one per size
    /// (`<cache>/workspace`; `disk.rs`).
    pub workspace_dir: PathBuf,
    /// Where paused sessions are kept, one dir each (`<cache>/paused`;
    /// [`crate::pause`]).
    pub paused_dir: PathBuf,
    /// The CA bundle guests with a network trust (default: the host's
    /// system bundle; `--ca-bundle` picks a file).
    pub ca_bundle: crate::spec::CaBundle,
    /// Where Airlock's CA for secret substitution lives (its key, mode
    /// 0600, made on first use; `docs/secrets.md`). Default:
    /// `<cache>/secrets-ca`.
    pub secrets_ca_dir: PathBuf,
    /// Warm pools, at most one per shape (`pool.rs`): runs and sessions of
    /// a pool's shape without a network take a paused VM from it. Their
    /// VMs hold slots, so together they must leave at least one of
    /// `max_concurrent_vms` free. Default none (the one-shot CLI keeps no
    /// pool).
    pub warm_pools: Vec<crate::spec::PoolConfig>,
    /// The shapes whose runs and sessions may restore a memory template
    /// (`None`: every shape, as the CLI does). A VM of another shape
    /// boots cold, so requests cannot make the host build and keep a
    /// template for each (image, memory, vCPUs) they pick. Warm pools
    /// build their own shape's template whatever this says. The server
    /// sets it (`[cache] template_shapes`).
    pub template_shapes: Option<Vec<crate::spec::MachineShape>>,
    /// Disk budget of the memory templates, allocated bytes (`None`: no
    /// budget). Past it, after each build, the least recently used are
    /// removed, never one in use or just used.
    pub templates_budget: Option<u64>,
    /// Disk budget of the package layers, as for the templates.
    pub layers_budget: Option<u64>,
    /// Longest wait for another request's build of the same memory
    /// template (one build per template at a time); past it the VM boots
    /// cold rather than queue behind it.
    pub template_wait: Duration,
    /// Longest wait for another request's install of the same package
    /// layer; past it the request fails as busy (retry later).
    pub layer_wait: Duration,
    /// The QEMU jail when this process runs as root (`jail.rs`; on by
    /// default, `AIRLOCK_JAIL=0` turns it off).
    pub jail: crate::jail::JailConfig,
    /// This host's name in a cluster (`None`: alone): every session id
    /// carries it (`s-<node>-<16 hex>`), so a proxy in front of several
    /// hosts routes a session's calls by its id ([`check_node_name`]).
    pub node_name: Option<String>,
    /// The disk budget of each VM's console log and of its QEMU log
    /// (`capped_log.rs`; default 4 MiB each).
    pub console_log_max_bytes: u64,
}

/// The variable that lets the egress proxy reach documentation addresses
/// ([`Config::egress_allow_documentation_ranges`]) when `1`.
pub const ALLOW_DOC_RANGES_ENV: &str = "AIRLOCK_EGRESS_ALLOW_DOC_RANGES";

/// Whether [`ALLOW_DOC_RANGES_ENV`] is `1`.
fn allow_doc_ranges_from_env() -> bool {
    std::env::var(ALLOW_DOC_RANGES_ENV).is_ok_and(|v| v.trim() == "1")
}

impl Default for Config {
    fn default() -> Self {
        let max_concurrent_vms = std::thread::available_parallelism().map_or(2, |n| n.get() * 2);
        let dirs = dirs();
        Self {
            images_dir: dirs.images,
            run_dir: dirs.run,
            max_concurrent_vms,
            queue_timeout: Duration::from_secs(3600),
            boot_timeout: Duration::from_secs(60),
            boot_attempts: 2,
            kill_grace: Duration::from_secs(2),
            // The pool follows the concurrency: enough ready overlays for
            // every slot, capped (each is a file and a qemu-img run).
            overlay_pool_target: max_concurrent_vms.min(8),
            debug_console: false,
            egress_test: crate::network::EgressTestOverrides::default(),
            egress_allow_documentation_ranges: allow_doc_ranges_from_env(),
            templates_dir: dirs.cache.join("templates"),
            restore_templates: false,
            packages_dir: dirs.cache.join("packages"),
            workspace_dir: dirs.cache.join("workspace"),
            paused_dir: dirs.cache.join("paused"),
            ca_bundle: crate::spec::CaBundle::default(),
            secrets_ca_dir: dirs.cache.join("secrets-ca"),
            warm_pools: Vec::new(),
            template_shapes: None,
            templates_budget: None,
            node_name: None,
            layers_budget: None,
            template_wait: Duration::from_secs(60),
            layer_wait: Duration::from_secs(900),
            jail: crate::jail::JailConfig::default(),
            console_log_max_bytes: crate::capped_log::DEFAULT_CONSOLE_LOG_MAX_BYTES,
        }
    }
}

impl Config {
    /// Checks the values.
    ///
    /// # Errors
    /// [`Error::Config`] naming the bad value.
    pub fn validate(&self) -> Result<()> {
        if self.max_concurrent_vms == 0 {
            return Err(Error::Config(
                "max_concurrent_vms must be at least 1".into(),
            ));
        }
        if self.boot_attempts == 0 {
            return Err(Error::Config("boot_attempts must be at least 1".into()));
        }
        if self.queue_timeout.is_zero() {
            return Err(Error::Config("queue_timeout must be above zero".into()));
        }
        if self.boot_timeout < Duration::from_millis(100) {
            return Err(Error::Config("boot_timeout must be at least 100 ms".into()));
        }
        crate::spec::validate_pools(&self.warm_pools, self.max_concurrent_vms)?;
        for shape in self.template_shapes.iter().flatten() {
            shape
                .validate()
                .map_err(|e| Error::Config(format!("template shape {shape}: {e}")))?;
        }
        for (name, budget) in [
            ("templates_budget", self.templates_budget),
            ("layers_budget", self.layers_budget),
        ] {
            if budget == Some(0) {
                return Err(Error::Config(format!(
                    "{name} must be above zero (leave it unset for no budget)"
                )));
            }
        }
        self.jail.validate().map_err(Error::Config)?;
        if let Some(node) = &self.node_name {
            check_node_name(node).map_err(Error::Config)?;
        }
        if self.console_log_max_bytes < crate::capped_log::MIN_CONSOLE_LOG_MAX_BYTES {
            return Err(Error::Config(format!(
                "console_log_max_bytes must be at least {}",
                crate::capped_log::MIN_CONSOLE_LOG_MAX_BYTES
            )));
        }
        // A work dir is run_dir/vms/<16 hex>/ and the longest socket name is
        // "event.sock": keep room under the 108-byte sun_path.
        let longest = self.run_dir.as_os_str().len() + "/vms/".len() + 16 + "/event.sock".len();
        if longest >= 108 {
            return Err(Error::Config(format!(
                "run dir {} is too long for unix socket paths ({longest} >= 108 bytes): set AIRLOCK_RUN_DIR to a shorter path",
                self.run_dir.display()
            )));
        }
        Ok(())
    }
}

/// Longest node name ([`Config::node_name`]).
pub const MAX_NODE_NAME_LEN: usize = 40;

/// Checks a node name: 1 to [`MAX_NODE_NAME_LEN`] lowercase letters,
/// digits and `-`, starting and ending with a letter or digit (a DNS
/// label, as a Kubernetes pod name is), so a session id carrying it stays
/// a URL path segment and a proxy can take it back out.
///
/// # Errors
/// Why the name is refused.
pub fn check_node_name(name: &str) -> std::result::Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if name.is_empty() || name.len() > MAX_NODE_NAME_LEN {
        return Err(format!(
            "node name {name:?} must be 1 to {MAX_NODE_NAME_LEN} characters"
        ));
    }
    if !name.chars().all(ok_char) || name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "node name {name:?} must be lowercase letters, digits and `-` (not first or last), \
             like a Kubernetes pod name"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn a_long_run_dir_is_refused_with_the_fix() {
        let config = Config {
            run_dir: PathBuf::from(format!("/{}", "d".repeat(90))),
            ..Config::default()
        };
        let msg = config.validate().unwrap_err().to_string();
        assert!(msg.contains("AIRLOCK_RUN_DIR"), "{msg}");
    }

    #[test]
    fn zero_boot_attempts_or_queue_timeout_are_refused() {
        for config in [
            Config {
                boot_attempts: 0,
                ..Config::default()
            },
            Config {
                queue_timeout: Duration::ZERO,
                ..Config::default()
            },
        ] {
            assert!(matches!(config.validate(), Err(Error::Config(_))));
        }
    }

    #[test]
    fn a_template_shape_outside_the_ranges_or_a_zero_budget_is_refused() {
        let mut huge = crate::spec::MachineShape::new(airlock_protocol::Language::Python);
        huge.memory_mib = 1 << 20;
        for config in [
            Config {
                template_shapes: Some(vec![huge]),
                ..Config::default()
            },
            Config {
                templates_budget: Some(0),
                ..Config::default()
            },
        ] {
            let message = config.validate().unwrap_err().to_string();
            assert!(message.contains("template"), "{message}");
        }
    }

    #[test]
    fn zero_concurrency_is_refused() {
        let config = Config {
            max_concurrent_vms: 0,
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }

    #[test]
    fn node_names_are_dns_labels_and_a_bad_one_is_refused_at_validate() {
        for good in ["a", "airlock-0", "node-12", &"x".repeat(MAX_NODE_NAME_LEN)] {
            assert_eq!(check_node_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Node",
            "a_b",
            "a.b",
            "a/b",
            &"x".repeat(MAX_NODE_NAME_LEN + 1),
        ] {
            assert!(check_node_name(bad).is_err(), "{bad:?}");
        }
        let config = Config {
            node_name: Some("Bad Name".into()),
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }
}
