//! Which cluster a client command talks to, and as whom, as `nats context` and kubeconfig do.
//!
//! A context is a small JSON file: the brokers' client addresses, the CA to trust, an optional
//! client certificate, and a user with the file holding its password. `chorus up` writes one into
//! its data directory and makes it the current one (`context.json` in the config directory:
//! `$CHORUS_CONFIG_DIR`, else `$XDG_CONFIG_HOME/chorus`, else `~/.config/chorus`).
//!
//! Each of `--brokers`, `--user`, `--password`, `--ca`, `--client-cert` and `--client-key` comes
//! from its flag,
//! else its environment variable, else the context: `--context FILE` (`CHORUS_CONTEXT`), or the
//! current one when there is one.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use chorus_consumers::{ClientConfig, ConnectOptions, Credentials, Tls};
use serde::{Deserialize, Serialize};

use chorus_broker::security::pki;

/// The client addresses `chorus up` uses, and so the default target of client commands.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103";

/// A context file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    pub brokers: Vec<String>,
    /// The cluster's CA: connect over TLS, trusting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// A client certificate and its key, when the user authenticates by certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A file whose first line is the user's password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

impl Context {
    pub fn load(path: &Path) -> anyhow::Result<Context> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading the context {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("the context {} is not valid", path.display()))
    }

    /// Writes the context to `path`, readable by its owner only (it names a password file).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self)? + "\n";
        pki::write_file(path, &text, true)?;
        Ok(())
    }
}

/// Where the current context lives, if a config directory can be found.
pub fn current_path() -> Option<PathBuf> {
    let dir = match (std::env::var_os("CHORUS_CONFIG_DIR"), std::env::var_os("XDG_CONFIG_HOME")) {
        (Some(dir), _) => PathBuf::from(dir),
        (None, Some(config)) => PathBuf::from(config).join("chorus"),
        (None, None) => PathBuf::from(std::env::var_os("HOME")?).join(".config").join("chorus"),
    };
    Some(dir.join("context.json"))
}

/// What a client command connects with, once flags, environment and context are merged.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub brokers: Vec<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The flags a client command may give; each overrides the context.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub context: Option<PathBuf>,
    pub brokers: Option<Vec<String>>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Overrides {
    /// Merges the flags over the context they name, or over the current one if there is one.
    pub fn resolve(&self) -> anyhow::Result<Resolved> {
        let context = match &self.context {
            Some(path) => Context::load(path)?,
            None => match current_path().filter(|path| path.exists()) {
                Some(path) => Context::load(&path)?,
                None => Context::default(),
            },
        };
        let password = match (&self.password, &context.password_file) {
            (Some(password), _) => Some(password.clone()),
            (None, Some(file)) => Some(read_password(file)?),
            (None, None) => None,
        };
        let brokers = match (&self.brokers, context.brokers.is_empty()) {
            (Some(brokers), _) => brokers.clone(),
            (None, false) => context.brokers,
            (None, true) => DEFAULT_BROKERS.split(',').map(str::to_owned).collect(),
        };
        Ok(Resolved {
            brokers,
            user: self.user.clone().or(context.user),
            password,
            ca: self.ca.clone().or(context.ca),
            cert: self.cert.clone().or(context.cert),
            key: self.key.clone().or(context.key),
        })
    }
}

/// The first line of a password file.
pub fn read_password(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading the password file {}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

impl Resolved {
    /// How each connection opens: TLS when a CA is given, credentials when a user is.
    pub fn connect_options(&self, client_name: &str) -> anyhow::Result<ConnectOptions> {
        let tls = match (&self.ca, &self.cert, &self.key) {
            (Some(ca), Some(cert), Some(key)) => Some(Tls::from_files(ca, Some((cert, key)))?),
            (Some(ca), None, None) => Some(Tls::from_files(ca, None)?),
            (None, None, None) => None,
            (None, _, _) => anyhow::bail!("a client certificate needs the cluster's CA too (--ca)"),
            _ => anyhow::bail!("--client-cert and --client-key go together"),
        };
        let credentials = match (&self.user, &self.password) {
            (Some(user), Some(password)) => Some(Credentials::new(user, password)),
            (Some(user), None) if self.cert.is_none() => {
                anyhow::bail!("user {user:?} needs a password (--password or CHORUS_PASSWORD)")
            }
            _ => None,
        };
        Ok(ConnectOptions { credentials, tls, ..ConnectOptions::new(client_name) })
    }

    pub fn client_config(&self, client_name: &str) -> anyhow::Result<ClientConfig> {
        let options = self.connect_options(client_name)?;
        let mut config = ClientConfig::new(self.brokers.clone());
        config.client_name = options.client_name;
        config.credentials = options.credentials;
        config.tls = options.tls;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_context_they_name() {
        let dir = tempfile::tempdir().unwrap();
        let password_file = dir.path().join("pw");
        std::fs::write(&password_file, "s3cret\n").unwrap();
        let context = Context {
            brokers: vec!["127.0.0.1:1".into()],
            ca: Some(dir.path().join("ca.pem")),
            user: Some("admin".into()),
            password_file: Some(password_file),
            ..Context::default()
        };
        let path = dir.path().join("context.json");
        context.save(&path).unwrap();
        assert_eq!(Context::load(&path).unwrap(), context);
        let from_file = Overrides { context: Some(path.clone()), ..Overrides::default() }.resolve().unwrap();
        assert_eq!((from_file.user.as_deref(), from_file.password.as_deref()), (Some("admin"), Some("s3cret")));
        assert_eq!(from_file.brokers, vec!["127.0.0.1:1".to_owned()]);
        let overridden = Overrides {
            context: Some(path),
            brokers: Some(vec!["127.0.0.1:2".into()]),
            user: Some("alice".into()),
            password: Some("pw".into()),
            ..Overrides::default()
        }
        .resolve()
        .unwrap();
        assert_eq!((overridden.brokers[0].as_str(), overridden.user.as_deref()), ("127.0.0.1:2", Some("alice")));
        assert_eq!(overridden.password.as_deref(), Some("pw"));
        let no_password = Resolved { user: Some("bob".into()), ..Resolved::default() };
        assert!(no_password.connect_options("t").is_err(), "a user without a password is a mistake caught early");
    }
}
