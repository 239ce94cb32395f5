//! `--secret` and `--body-secret`, shared by `airlock run` and `airlock session`: a secret's
//! name and hosts on the command line, its value from this process's
//! environment or a file, never from the command line (which other users
//! of the host can read in `/proc/*/cmdline`, and shells keep in history).

use std::ffi::OsString;
use std::path::Path;

use airlock::spec::{HostPattern, Secret, SecretValue};
use clap::Args;

use crate::error::CliError;

/// `--secret NAME@HOST[,HOST...][:FILE]` and `--body-secret` (the same,
/// substituted in request bodies too); both repeatable.
#[derive(Debug, Clone, Default, Args)]
pub struct SecretFlags {
    /// A secret the code may use but never see: NAME@HOST[,HOST...] takes
    /// the value from this shell's environment variable NAME;
    /// NAME@HOST[,HOST...]:FILE reads it from FILE (one trailing newline
    /// dropped). Never give the value itself on the command line.
    ///
    /// The sandbox gets only a random placeholder in $NAME. Airlock's
    /// egress proxy replaces it with the value in the headers of HTTPS
    /// requests to those hosts (HTTP/1.1), and blocks any request that
    /// carries it anywhere else. The hosts join the allowlist (and only
    /// they). HOST is a name or *.domain. Repeatable.
    ///
    /// Example: OPENAI_API_KEY=sk-... airlock run --secret
    /// OPENAI_API_KEY@api.openai.com agent.py (in agent.py,
    /// os.environ["OPENAI_API_KEY"] is the placeholder and requests to
    /// api.openai.com carry the real key). See docs/secrets.md.
    #[arg(long = "secret", value_name = "NAME@HOST[,HOST...][:FILE]")]
    pub secret: Vec<String>,
    /// Like --secret, and the placeholder is also replaced in the bodies
    /// of requests to those hosts (for APIs that take a key in a JSON or
    /// form body). Bodies to those hosts are then read whole by the proxy
    /// (up to 8 MiB). Repeatable.
    ///
    /// Example: airlock run --body-secret DB_PASSWORD@db.example.com
    /// job.py (job.py may POST {"password": os.environ["DB_PASSWORD"]}).
    #[arg(long = "body-secret", value_name = "NAME@HOST[,HOST...][:FILE]")]
    pub body_secret: Vec<String>,
}

impl SecretFlags {
    /// The secrets, their values read from the environment (`env`) or
    /// their files.
    ///
    /// # Errors
    /// [`CliError::invalid`] for `secrets` (malformed flag, unset or empty
    /// variable, bad host), [`CliError::Io`] for an unreadable file. No
    /// message ever holds a value.
    pub fn read(&self, env: &dyn Fn(&str) -> Option<OsString>) -> Result<Vec<Secret>, CliError> {
        let headers = self.secret.iter().map(|flag| read_one(flag, false, env));
        let bodies = self
            .body_secret
            .iter()
            .map(|flag| read_one(flag, true, env));
        headers.chain(bodies).collect()
    }
}

/// The name of the flag, for messages.
fn flag_name(body: bool) -> &'static str {
    if body {
        "--body-secret"
    } else {
        "--secret"
    }
}

/// The parts of one flag: name, host patterns, file.
fn parse_flag(flag: &str, body: bool) -> Result<(&str, Vec<&str>, Option<&str>), CliError> {
    let bad = |why: &str| {
        let option = flag_name(body);
        CliError::invalid(
            "secrets",
            format!("{option} {flag:?}: {why}; write NAME@HOST[,HOST...] (value from $NAME) or NAME@HOST[,HOST...]:FILE"),
        )
    };
    let (name, rest) = flag.split_once('@').ok_or_else(|| bad("no '@'"))?;
    if name.is_empty() {
        return Err(bad("no NAME before '@'"));
    }
    // Host names hold no ':', so the first one starts the file.
    let (hosts, file) = match rest.split_once(':') {
        Some((hosts, file)) if !file.is_empty() => (hosts, Some(file)),
        Some(_) => return Err(bad("no FILE after ':'")),
        None => (rest, None),
    };
    let hosts: Vec<&str> = hosts.split(',').collect();
    if hosts.iter().any(|h| h.is_empty()) {
        return Err(bad("an empty HOST"));
    }
    Ok((name, hosts, file))
}

fn read_one(
    flag: &str,
    body: bool,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Secret, CliError> {
    let (name, hosts, file) = parse_flag(flag, body)?;
    let option = flag_name(body);
    let hosts = hosts
        .into_iter()
        .map(|h| {
            HostPattern::parse(name, h).map_err(|e| CliError::invalid("secrets", e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let value = match file {
        Some(file) => {
            let path = Path::new(file);
            let mut bytes =
                std::fs::read(path).map_err(|e| CliError::io("read the secret file", path, e))?;
            if bytes.ends_with(b"\r\n") {
                bytes.truncate(bytes.len() - 2);
            } else if bytes.ends_with(b"\n") {
                bytes.truncate(bytes.len() - 1);
            }
            bytes
        }
        None => {
            let value = env(name).ok_or_else(|| {
                CliError::invalid(
                    "secrets",
                    format!("{option} {name}@...: ${name} is not set; export {name} in this shell, or give a file: {option} {name}@HOSTS:FILE"),
                )
            })?;
            std::os::unix::ffi::OsStringExt::into_vec(value)
        }
    };
    let secret = Secret {
        name: name.to_owned(),
        value: SecretValue::new(value),
        hosts,
        body,
    };
    secret
        .validate()
        .map_err(|e| CliError::invalid("secrets", e.to_string()))?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(list: &[&str]) -> SecretFlags {
        SecretFlags {
            secret: list.iter().map(|s| s.to_string()).collect(),
            body_secret: Vec::new(),
        }
    }

    fn env_with(name: &'static str, value: &'static str) -> impl Fn(&str) -> Option<OsString> {
        move |n: &str| (n == name).then(|| OsString::from(value))
    }

    #[test]
    fn a_secret_takes_its_value_from_the_variable_of_its_name() {
        let secrets = flags(&["TOKEN@api.example.com,*.example.org"])
            .read(&env_with("TOKEN", "s3cret"))
            .expect("valid");
        assert_eq!(secrets.len(), 1);
        assert_eq!(secrets[0].name, "TOKEN");
        assert_eq!(secrets[0].value.expose(), b"s3cret");
        assert!(secrets[0].bound_to("api.example.com"));
        assert!(secrets[0].bound_to("a.example.org"));
        assert!(!secrets[0].body);
    }

    #[test]
    fn a_secret_can_come_from_a_file_without_its_trailing_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").expect("write");
        let flag = format!("TOKEN@api.example.com:{}", file.display());
        let secrets = flags(&[&flag]).read(&|_| None).expect("valid");
        assert_eq!(secrets[0].value.expose(), b"from-file");
    }

    #[test]
    fn an_unset_variable_is_refused_naming_the_fix_not_a_value() {
        let err = flags(&["TOKEN@api.example.com"])
            .read(&env_with("OTHER", "s3cret"))
            .expect_err("unset");
        let text = err.to_string();
        assert!(text.contains("export TOKEN"), "{text}");
        assert_eq!(err.invalid_field(), Some("secrets"));
        let err = flags(&["TOKEN@api.example.com"])
            .read(&env_with("TOKEN", ""))
            .expect_err("empty");
        assert_eq!(err.invalid_field(), Some("secrets"));
    }

    #[test]
    fn malformed_flags_and_broad_hosts_are_refused() {
        let env = env_with("T", "v");
        for flag in [
            "T",
            "@api.example.com",
            "T@",
            "T@a.example.com,",
            "T@a.example.com:",
            "T@*.com",
            "T@1.2.3.4",
            "T-1@a.example.com",
        ] {
            let err = flags(&[flag]).read(&env).expect_err(flag);
            assert_eq!(err.invalid_field(), Some("secrets"), "{flag}: {err}");
        }
    }

    #[test]
    fn a_body_secret_is_marked_body_and_named_in_its_errors() {
        let both = SecretFlags {
            secret: vec!["TOKEN@api.example.com".into()],
            body_secret: vec!["DB_PASSWORD@db.example.com".into()],
        };
        let env = |n: &str| Some(OsString::from(format!("value-of-{n}")));

        let secrets = both.read(&env).expect("valid");

        assert_eq!(secrets.len(), 2);
        assert!(!secrets[0].body);
        assert_eq!(secrets[1].name, "DB_PASSWORD");
        assert!(secrets[1].body);
        assert_eq!(secrets[1].value.expose(), b"value-of-DB_PASSWORD");
        let unset = SecretFlags {
            secret: Vec::new(),
            body_secret: vec!["DB_PASSWORD@db.example.com".into()],
        };
        let message = unset.read(&|_| None).expect_err("unset").to_string();
        assert!(
            message.contains("--body-secret DB_PASSWORD@..."),
            "{message}"
        );
        let malformed = SecretFlags {
            secret: Vec::new(),
            body_secret: vec!["DB_PASSWORD".into()],
        };
        let message = malformed.read(&env).expect_err("no @").to_string();
        assert!(
            message.contains("--body-secret \"DB_PASSWORD\""),
            "{message}"
        );
    }
}
