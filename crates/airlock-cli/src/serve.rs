//! `airlock serve` (with `serve keys add|list|revoke` and `serve secrets
//! set|list|delete`, [`crate::serve_secrets`]): its arguments,
//! merged over the config file into the server's validated
//! [`ServerConfig`], then [`airlock_server::server::run`] until the first
//! stop signal.
//!
//! On SIGTERM (or SIGINT) the server stops accepting, lets running
//! requests go on for the drain grace, destroys every VM, exits 0. A
//! second signal kills every VM at once. SIGHUP reloads the keys file
//! when there is one (a revoked key stops working at once); without one,
//! it stops the server as SIGTERM does.

use crate::process::{self, STOP_SIGNALS};
use airlock_server::config::{LogFormat, PoolSpec};
use airlock_server::keys::{default_keys_file, KeyFormat, Keyring, KeysFile};
use airlock_server::quota::QuotaOverrides;
use airlock_server::{server, ServerConfig, ServerError};
use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Arguments of `airlock serve`.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServeArgs {
    /// Manage API keys or secrets instead of serving.
    #[command(subcommand)]
    pub command: Option<ServeCommand>,
    /// A TOML configuration file; flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:7000). A non-loopback
    /// address needs --keys-file.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Also serve E2B's protocol here (`docs/e2b.md`): point the E2B
    /// SDKs' E2B_API_URL and E2B_SANDBOX_URL at it. Same keys (`serve
    /// keys add --format e2b`), tenants and quotas.
    #[arg(long, value_name = "ADDR:PORT")]
    pub e2b_listen: Option<SocketAddr>,
    /// E2B's host-name mode on the E2B listener: a request whose Host is
    /// `<port>-<sandbox id>.DOMAIN` goes to that sandbox, and the listener
    /// also speaks TLS for `api.DOMAIN` and `*.DOMAIN` (plain HTTP still
    /// works). Clients set E2B_DOMAIN=DOMAIN (or DOMAIN:PORT off port
    /// 443). `localhost` works on one host with Debian's
    /// libnss-myhostname.
    #[arg(long, value_name = "DOMAIN")]
    pub e2b_domain: Option<String>,
    /// The TLS certificate chain (PEM) for --e2b-domain: a wildcard
    /// `*.DOMAIN` that also names `api.DOMAIN`. Without it a local CA
    /// under the cache signs one per name; clients trust
    /// `<cache>/e2b/ca.pem` (SSL_CERT_FILE, NODE_EXTRA_CA_CERTS).
    #[arg(long, value_name = "FILE", requires = "e2b_key")]
    pub e2b_cert: Option<PathBuf>,
    /// The private key (PEM) of --e2b-cert.
    #[arg(long, value_name = "FILE", requires = "e2b_cert")]
    pub e2b_key: Option<PathBuf>,
    /// The API keys file (`airlock serve keys add`). Without one every
    /// request acts for the local user (loopback only).
    #[arg(long, value_name = "FILE")]
    pub keys_file: Option<PathBuf>,
    /// The secrets store's key file (32 bytes as 64 hex digits or base64,
    /// mode 0600); else $AIRLOCK_SECRETS_KEY. Without a key the server
    /// keeps no secrets.
    #[arg(long, value_name = "FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// Largest JSON body, in bytes.
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// Largest file written into or read from a session, in bytes
    /// (`[files] max_bytes`).
    #[arg(long)]
    pub max_file_bytes: Option<usize>,
    /// VMs at once, all tenants together.
    #[arg(long)]
    pub max_concurrent_vms: Option<usize>,
    /// Longest wait for a free VM slot, in seconds (then 503).
    #[arg(long)]
    pub queue_timeout_s: Option<u64>,
    /// After SIGTERM, how long running requests may go on, in seconds.
    #[arg(long)]
    pub drain_grace_s: Option<u64>,
    /// This node's name in a cluster: carried by every session id
    /// (`s-<node>-<hex>`) so a proxy routes each session's calls to it
    /// (default: the host name; in Kubernetes, the pod name). Lowercase
    /// letters, digits and `-`.
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Refuse new runs and sessions with 503 `node_full` when every VM
    /// slot is taken, instead of queueing them: for a cluster's nodes,
    /// whose proxy then tries another node.
    #[arg(long)]
    pub refuse_when_full: bool,
    /// Log format on stderr.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// Boot every VM cold instead of restoring memory templates (no warm
    /// pool either).
    #[arg(long)]
    pub cold: bool,
    /// A warm pool of paused VMs, `LANG[:SIZE]` (repeatable; replaces the
    /// config file's pools; default one python VM when there are two VM
    /// slots or more). Runs and sessions of
    /// that language at the default shape, without network or packages,
    /// take a VM from it in milliseconds. LANG may be an image
    /// (`python-data:1`): a pool serves one image.
    #[arg(long = "pool", value_name = "LANG[:SIZE]", value_parser = PoolSpec::parse_flag)]
    pub pools: Vec<PoolSpec>,
    /// No warm pool.
    #[arg(long, conflicts_with = "pools")]
    pub no_pool: bool,
    /// Default quota: runs at once per tenant.
    #[arg(long)]
    pub quota_concurrent_runs: Option<u32>,
    /// Default quota: live sessions per tenant.
    #[arg(long)]
    pub quota_live_sessions: Option<u32>,
    /// Default quota: largest guest memory of one VM, in MiB.
    #[arg(long)]
    pub quota_memory_mib: Option<u32>,
    /// Default quota: longest timeout of one run or exec, in seconds.
    #[arg(long)]
    pub quota_timeout_s: Option<u64>,
    /// Default quota: requests per minute per tenant.
    #[arg(long)]
    pub quota_requests_per_minute: Option<u32>,
    /// Check the configuration (and the keys file) and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// `--log-format` (the server's [`LogFormat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormatArg {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(format: LogFormatArg) -> Self {
        match format {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

/// `serve keys add --format` (the server's [`KeyFormat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyFormatArg {
    /// `airlock_` and 64 hex digits.
    Airlock,
    /// `e2b_` and 40 hex digits.
    E2b,
}

impl From<KeyFormatArg> for KeyFormat {
    fn from(format: KeyFormatArg) -> Self {
        match format {
            KeyFormatArg::Airlock => KeyFormat::Airlock,
            KeyFormatArg::E2b => KeyFormat::E2b,
        }
    }
}

/// Subcommands of `airlock serve`.
#[derive(Debug, Clone, Subcommand)]
pub enum ServeCommand {
    /// Add, list or revoke API keys.
    Keys {
        /// What to do.
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Set, list or delete a tenant's secrets (values from stdin, stored
    /// encrypted; docs/secrets.md).
    Secrets {
        /// What to do.
        #[command(subcommand)]
        action: crate::serve_secrets::SecretsAction,
    },
}

/// `airlock serve keys ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum KeysAction {
    /// Make a new key for a tenant: the key is printed once; only its
    /// sha256 is stored.
    Add {
        /// The tenant the key acts for (`[A-Za-z0-9_-]{1,128}`).
        #[arg(long)]
        tenant: String,
        /// The keys file (default: `$XDG_CONFIG_HOME/airlock/keys.toml`).
        #[arg(long, value_name = "FILE")]
        keys_file: Option<PathBuf>,
        /// This key's quota: runs at once.
        #[arg(long)]
        concurrent_runs: Option<u32>,
        /// This key's quota: live sessions.
        #[arg(long)]
        live_sessions: Option<u32>,
        /// This key's quota: largest VM memory, in MiB.
        #[arg(long)]
        memory_mib: Option<u32>,
        /// This key's quota: longest timeout, in seconds.
        #[arg(long)]
        timeout_s: Option<u64>,
        /// This key's quota: requests per minute.
        #[arg(long)]
        requests_per_minute: Option<u32>,
        /// The key's form: `airlock` (`airlock_` + 64 hex, for
        /// `Authorization: Bearer`) or `e2b` (`e2b_` + 40 hex, the form
        /// E2B's SDKs accept as `E2B_API_KEY`). Both work on both
        /// listeners.
        #[arg(long, value_enum, default_value_t = KeyFormatArg::Airlock)]
        format: KeyFormatArg,
    },
    /// List the keys (id, tenant, age, quotas; never the key).
    List {
        /// The keys file.
        #[arg(long, value_name = "FILE")]
        keys_file: Option<PathBuf>,
    },
    /// Revoke a key by its id (from `keys list`). A running server stops
    /// taking it on SIGHUP (it reloads the keys file), no restart needed.
    Revoke {
        /// The key's id.
        id: String,
        /// The keys file.
        #[arg(long, value_name = "FILE")]
        keys_file: Option<PathBuf>,
    },
}

impl ServeArgs {
    /// The configuration: the file's (if any), then the flags over it,
    /// validated.
    ///
    /// # Errors
    /// The server's `Config` error for an unreadable file or a bad value.
    pub fn to_config(&self) -> Result<ServerConfig, ServerError> {
        let mut c = match &self.config {
            Some(path) => ServerConfig::load(path)?,
            None => ServerConfig::default(),
        };
        macro_rules! set {
            ($($flag:ident => $($field:ident).+),* $(,)?) => {
                $(if let Some(v) = self.$flag.clone() { c.$($field).+ = v; })*
            };
        }
        set!(
            listen => listen,
            max_body_bytes => max_body_bytes,
            max_file_bytes => files.max_bytes,
            queue_timeout_s => queue_timeout_s,
            drain_grace_s => drain_grace_s,
            quota_concurrent_runs => quotas.concurrent_runs,
            quota_live_sessions => quotas.live_sessions,
            quota_memory_mib => quotas.memory_mib,
            quota_timeout_s => quotas.timeout_s,
            quota_requests_per_minute => quotas.requests_per_minute,
        );
        if let Some(format) = self.log_format {
            c.log_format = format.into();
        }
        if self.node_name.is_some() {
            c.node_name.clone_from(&self.node_name);
        }
        if self.refuse_when_full {
            c.refuse_when_full = true;
        }
        if self.keys_file.is_some() {
            c.keys_file.clone_from(&self.keys_file);
        }
        if self.e2b_listen.is_some() {
            c.e2b.listen = self.e2b_listen;
        }
        if self.e2b_domain.is_some() {
            c.e2b.domain.clone_from(&self.e2b_domain);
        }
        if self.e2b_cert.is_some() {
            c.e2b.cert.clone_from(&self.e2b_cert);
            c.e2b.key.clone_from(&self.e2b_key);
        }
        if self.secrets_key_file.is_some() {
            c.secrets_key_file.clone_from(&self.secrets_key_file);
        }
        if self.max_concurrent_vms.is_some() {
            c.max_concurrent_vms = self.max_concurrent_vms;
        }
        if self.cold {
            c.restore_templates = false;
        }
        if !self.pools.is_empty() {
            c.pools = Some(self.pools.clone());
        }
        if self.no_pool {
            c.pools = Some(Vec::new());
        }
        c.validate()?;
        Ok(c)
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs `airlock serve keys ...`.
fn keys(action: KeysAction) -> Result<(), ServerError> {
    match action {
        KeysAction::Add {
            tenant,
            keys_file,
            concurrent_runs,
            live_sessions,
            memory_mib,
            timeout_s,
            requests_per_minute,
            format,
        } => {
            let path = keys_file.unwrap_or_else(default_keys_file);
            let mut file = KeysFile::load(&path, true)?;
            let quotas = QuotaOverrides {
                concurrent_runs,
                live_sessions,
                memory_mib,
                timeout_s,
                requests_per_minute,
                // vCPUs: the server's defaults, or the keys file's table.
                ..QuotaOverrides::default()
            };
            let (key, entry) = file.add_of(format.into(), &tenant, quotas, now_unix())?;
            file.save(&path)?;
            println!("{key}");
            eprintln!(
                "airlock: key {} for tenant {} added to {} (the key is shown once; only its hash is kept)",
                entry.id,
                entry.tenant,
                path.display()
            );
            Ok(())
        }
        KeysAction::List { keys_file } => {
            let path = keys_file.unwrap_or_else(default_keys_file);
            let file = KeysFile::load(&path, true)?;
            println!("ID\tTENANT\tCREATED_UNIX\tQUOTAS");
            for k in &file.keys {
                let quotas = toml::to_string(&k.quotas)
                    .unwrap_or_default()
                    .trim()
                    .replace('\n', ", ");
                println!(
                    "{}\t{}\t{}\t{}",
                    k.id,
                    k.tenant,
                    k.created_unix,
                    if quotas.is_empty() {
                        "defaults"
                    } else {
                        &quotas
                    }
                );
            }
            Ok(())
        }
        KeysAction::Revoke { id, keys_file } => {
            let path = keys_file.unwrap_or_else(default_keys_file);
            let mut file = KeysFile::load(&path, false)?;
            let entry = file.revoke(&id)?;
            file.save(&path)?;
            eprintln!(
                "airlock: key {} of tenant {} revoked (a running server drops it on SIGHUP: `kill -HUP <pid>`)",
                entry.id, entry.tenant
            );
            Ok(())
        }
    }
}

/// Runs `airlock serve`; returns the process exit status.
pub fn main(args: ServeArgs) -> i32 {
    match args.command {
        Some(ServeCommand::Keys { action }) => {
            return match keys(action) {
                Ok(()) => 0,
                Err(e) => process::failed(e),
            };
        }
        Some(ServeCommand::Secrets { action }) => return crate::serve_secrets::main(action),
        None => {}
    }
    let config = match args.to_config() {
        Ok(c) => c,
        Err(e) => return process::failed(e),
    };
    let keyring = match Keyring::of_config(&config) {
        Ok(k) => k,
        Err(e) => return process::failed(e),
    };
    if args.check_config {
        // The secrets key, when one is given, must open the store.
        let env_key = std::env::var(airlock_server::secrets::KEY_ENV).ok();
        if let Err(e) = config.secret_store(env_key.as_deref()) {
            return process::failed(e);
        }
        // The connection cap must fit the descriptor limit `serve` raises
        // to; one that does not is lowered at start, said here too.
        let configured = config.listener.max_connections;
        let mut fitted = config.clone();
        let fits = airlock_server::listener::hard_nofile_limit().and_then(|nofile| {
            airlock_server::listener::fit_descriptors(&mut fitted, nofile)
                .map(|lowered| (lowered, nofile))
        });
        match fits {
            Err(e) => return process::failed(e),
            Ok((Some(lowered), nofile)) => eprintln!(
                "warning: {}",
                airlock_server::listener::lowered_cap_message(configured, lowered, nofile)
            ),
            Ok((None, _)) => {}
        }
        println!(
            "configuration OK: listen {}, {} key(s), {} VM slot(s)",
            config.listen,
            keyring.as_ref().map_or(0, Keyring::len),
            config.orchestrator().max_concurrent_vms
        );
        return 0;
    }
    process::init_logging(config.log_format, "info");
    // With a keys file SIGHUP reloads it (`server::reload_keys_on_hangup`)
    // instead of stopping the server.
    let stops: &[nix::sys::signal::Signal] = if config.keys_file.is_some() {
        &[
            nix::sys::signal::Signal::SIGINT,
            nix::sys::signal::Signal::SIGTERM,
        ]
    } else {
        &STOP_SIGNALS
    };
    process::block_on(stops, |mut interrupts| async move {
        match server::run(config, keyring, interrupts.first()).await {
            Ok(()) => 0,
            Err(e) => process::failed(e),
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Top {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> ServeArgs {
        let mut argv = vec!["serve"];
        argv.extend_from_slice(args);
        Top::try_parse_from(argv).unwrap().serve
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\ndrain_grace_s = 5\n").unwrap();
        let config = parse(&[
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9001",
            "--quota-concurrent-runs",
            "2",
            "--max-concurrent-vms",
            "4",
        ])
        .to_config()
        .unwrap();
        assert_eq!(config.listen.port(), 9001);
        assert_eq!(config.drain_grace_s, 5);
        assert_eq!(config.quotas.concurrent_runs, 2);
        assert_eq!(config.max_concurrent_vms, Some(4));
    }

    #[test]
    fn a_public_listen_without_keys_is_refused() {
        assert!(parse(&["--listen", "0.0.0.0:7000"]).to_config().is_err());
    }

    #[test]
    fn keys_add_list_and_revoke_work_on_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        keys(KeysAction::Add {
            tenant: "alice".into(),
            keys_file: Some(path.clone()),
            concurrent_runs: Some(1),
            live_sessions: None,
            memory_mib: None,
            timeout_s: None,
            requests_per_minute: None,
            format: KeyFormatArg::E2b,
        })
        .unwrap();
        let file = KeysFile::load(&path, false).unwrap();
        assert_eq!(file.keys.len(), 1);
        assert_eq!(file.keys[0].quotas.concurrent_runs, Some(1));
        keys(KeysAction::List {
            keys_file: Some(path.clone()),
        })
        .unwrap();
        keys(KeysAction::Revoke {
            id: file.keys[0].id.clone(),
            keys_file: Some(path.clone()),
        })
        .unwrap();
        assert!(KeysFile::load(&path, false).unwrap().keys.is_empty());
    }
}
