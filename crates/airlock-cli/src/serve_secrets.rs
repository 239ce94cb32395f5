//! `airlock serve secrets set|list|delete`: the server's per-tenant
//! secrets store, managed on the server's host (`docs/secrets.md`). The
//! store and its key are the server's: from `--config` (its
//! `secrets_key_file` and `secrets_file`), the flags below, or
//! `$AIRLOCK_SECRETS_KEY`. A value is read from stdin, never from the
//! command line (other users can read `/proc/*/cmdline`, shells keep
//! history). A running server sees the change at once (the file is the
//! store).

use airlock_server::secrets::{NewSecret, SecretStore, KEY_ENV};
use airlock_server::{ServerConfig, ServerError};
use clap::{Args, Subcommand};
use std::io::{IsTerminal, Read};
use std::path::PathBuf;

/// Where the store is and its key.
#[derive(Debug, Clone, Default, Args)]
pub struct StoreFlags {
    /// The server's TOML configuration (its `secrets_key_file` and
    /// `secrets_file`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The store's key file (32 bytes as 64 hex digits or base64, mode
    /// 0600), over the configuration's; else $AIRLOCK_SECRETS_KEY.
    #[arg(long, value_name = "FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// The store file (default `<cache>/server/secrets.json`).
    #[arg(long, value_name = "FILE")]
    pub secrets_file: Option<PathBuf>,
}

impl StoreFlags {
    /// The store, opened with its key.
    ///
    /// # Errors
    /// The server's `Config` or `Secrets` errors; `Secrets` too when no
    /// key is given at all.
    pub fn open(&self) -> Result<SecretStore, ServerError> {
        let mut config = match &self.config {
            Some(path) => ServerConfig::load(path)?,
            None => ServerConfig::default(),
        };
        if self.secrets_key_file.is_some() {
            config.secrets_key_file.clone_from(&self.secrets_key_file);
        }
        if self.secrets_file.is_some() {
            config.secrets_file.clone_from(&self.secrets_file);
        }
        let env_key = std::env::var(KEY_ENV).ok();
        config
            .secret_store(env_key.as_deref())?
            .ok_or_else(|| ServerError::Secrets {
                source_name: "flags".into(),
                message: format!(
                    "no secrets key: give --secrets-key-file, a --config with secrets_key_file, or ${KEY_ENV} (make one with `openssl rand -hex 32`)"
                ),
            })
    }
}

/// `airlock serve secrets ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum SecretsAction {
    /// Store a tenant's secret (or replace it): its value is read from
    /// stdin (one trailing newline dropped), e.g. `printf %s "$TOKEN" |
    /// airlock serve secrets set --tenant alice TOKEN --hosts
    /// api.example.com`.
    Set {
        /// The tenant it belongs to.
        #[arg(long)]
        tenant: String,
        /// Its name: the variable the sandbox sees.
        name: String,
        /// The hosts it may be sent to (names or `*.domain`),
        /// comma-separated.
        #[arg(
            long,
            value_name = "HOST[,HOST...]",
            value_delimiter = ',',
            required = true
        )]
        hosts: Vec<String>,
        /// Substitute it in request bodies too, not only in headers.
        #[arg(long)]
        body: bool,
        /// Where the store is.
        #[command(flatten)]
        store: StoreFlags,
    },
    /// List a tenant's secrets: name, hosts, body flag and dates (never a
    /// value).
    List {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Where the store is.
        #[command(flatten)]
        store: StoreFlags,
    },
    /// Delete a tenant's secret.
    Delete {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The secret's name.
        name: String,
        /// Where the store is.
        #[command(flatten)]
        store: StoreFlags,
    },
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A value read whole from `input`, one trailing newline dropped.
fn read_value(mut input: impl Read) -> Result<Vec<u8>, ServerError> {
    let mut value = Vec::new();
    input
        .read_to_end(&mut value)
        .map_err(|e| ServerError::internal("read the secret's value from stdin", e))?;
    if value.ends_with(b"\r\n") {
        value.truncate(value.len() - 2);
    } else if value.ends_with(b"\n") {
        value.truncate(value.len() - 1);
    }
    Ok(value)
}

/// Runs `airlock serve secrets ...` with the value (for `set`) from
/// `stdin`.
///
/// # Errors
/// The store's errors; a bad name, host or value.
pub fn run(action: SecretsAction, stdin: impl Read) -> Result<(), ServerError> {
    match action {
        SecretsAction::Set {
            tenant,
            name,
            hosts,
            body,
            store,
        } => {
            let store = store.open()?;
            let value = read_value(stdin)?;
            let secret = NewSecret {
                name,
                value: airlock::spec::SecretValue::new(value),
                hosts,
                body,
            };
            let (stored, info) = store.set(&tenant, &secret, now_unix())?;
            eprintln!(
                "airlock: secret {} of tenant {} {} in {} (bound to {})",
                info.name,
                tenant,
                match stored {
                    airlock_server::secrets::Stored::Created => "stored",
                    airlock_server::secrets::Stored::Replaced => "replaced",
                },
                store.path().display(),
                info.hosts.join(", ")
            );
            Ok(())
        }
        SecretsAction::List { tenant, store } => {
            let store = store.open()?;
            println!("NAME\tHOSTS\tBODY\tCREATED_UNIX\tUPDATED_UNIX");
            for s in store.list(&tenant)? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    s.name,
                    s.hosts.join(","),
                    s.body,
                    s.created_unix,
                    s.updated_unix
                );
            }
            Ok(())
        }
        SecretsAction::Delete {
            tenant,
            name,
            store,
        } => {
            let store = store.open()?;
            store.delete(&tenant, &name)?;
            eprintln!("airlock: secret {name} of tenant {tenant} deleted");
            Ok(())
        }
    }
}

/// Runs `airlock serve secrets ...` on this process's stdin; the exit
/// status.
pub fn main(action: SecretsAction) -> i32 {
    let stdin = std::io::stdin();
    if matches!(action, SecretsAction::Set { .. }) && stdin.is_terminal() {
        eprintln!("airlock: type the secret's value, then Ctrl-D (it is not echoed to any log)");
    }
    match run(action, stdin.lock()) {
        Ok(()) => 0,
        Err(e) => crate::process::failed(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;

    const KEY: &str = "0f0e0d0c0b0a09080706050403020100f0e0d0c0b0a090807060504030201000";

    fn store_flags(dir: &std::path::Path) -> StoreFlags {
        let key = dir.join("key");
        std::fs::write(&key, KEY).unwrap();
        std::fs::set_permissions(
            &key,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
        )
        .unwrap();
        StoreFlags {
            config: None,
            secrets_key_file: Some(key),
            secrets_file: Some(dir.join("secrets.json")),
        }
    }

    #[test]
    fn set_reads_the_value_from_stdin_and_stores_it_encrypted() {
        let dir = tempfile::tempdir().unwrap();
        let flags = store_flags(dir.path());
        run(
            SecretsAction::Set {
                tenant: "alice".into(),
                name: "TOKEN".into(),
                hosts: vec!["api.example.com".into(), "*.example.org".into()],
                body: true,
                store: flags.clone(),
            },
            &b"sk-from-stdin-123\n"[..],
        )
        .unwrap();
        let text = std::fs::read_to_string(dir.path().join("secrets.json")).unwrap();
        assert!(!text.contains("sk-from-stdin"), "{text}");
        let store = flags.open().unwrap();
        let secret = &store.resolve("alice", &["TOKEN".into()]).unwrap()[0];
        assert_eq!(secret.value.expose(), b"sk-from-stdin-123");
        assert!(secret.body && secret.bound_to("a.example.org"));
        run(
            SecretsAction::List {
                tenant: "alice".into(),
                store: flags.clone(),
            },
            &b""[..],
        )
        .unwrap();
        run(
            SecretsAction::Delete {
                tenant: "alice".into(),
                name: "TOKEN".into(),
                store: flags.clone(),
            },
            &b""[..],
        )
        .unwrap();
        assert!(store.list("alice").unwrap().is_empty());
    }

    #[test]
    fn an_empty_value_and_a_missing_key_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let set = |store: StoreFlags| SecretsAction::Set {
            tenant: "t".into(),
            name: "K".into(),
            hosts: vec!["a.example.com".into()],
            body: false,
            store,
        };
        assert!(run(set(store_flags(dir.path())), &b"\n"[..]).is_err());
        if std::env::var_os(KEY_ENV).is_none() {
            let err = run(set(StoreFlags::default()), &b"v"[..]).unwrap_err();
            assert!(err.to_string().contains("no secrets key"), "{err}");
        }
    }

    #[test]
    fn deleting_a_missing_secret_fails() {
        let dir = tempfile::tempdir().unwrap();
        let err = run(
            SecretsAction::Delete {
                tenant: "t".into(),
                name: "NOPE".into(),
                store: store_flags(dir.path()),
            },
            &b""[..],
        )
        .unwrap_err();
        assert!(err.to_string().contains("NOPE"), "{err}");
    }
}
