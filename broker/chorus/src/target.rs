//! Which cluster a client command talks to, as whom, and how it prints: the flags every client
//! command shares, resolved over the context.

use std::path::PathBuf;

use clap::Args;

use crate::context;

/// Which cluster a client command talks to, as whom, and how it prints. Flags override the
/// context (`--context`, or the current one `chorus up` wrote).
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Client addresses of some brokers, comma-separated [default: the context's, else 127.0.0.1:7101-7103].
    #[arg(long, env = "CHORUS_BROKERS", value_delimiter = ',', global = true)]
    pub brokers: Option<Vec<String>>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// A context file to take the brokers, TLS and user from [default: the current context].
    #[arg(long, env = "CHORUS_CONTEXT", global = true)]
    pub context: Option<PathBuf>,
    /// The user to act as.
    #[arg(long, env = "CHORUS_USER", global = true)]
    pub user: Option<String>,
    /// The user's password.
    #[arg(long, env = "CHORUS_PASSWORD", hide_env_values = true, global = true)]
    pub password: Option<String>,
    /// Connect over TLS, trusting this CA (PEM).
    #[arg(long, env = "CHORUS_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM) naming the user, with --client-key.
    #[arg(long, env = "CHORUS_CLIENT_CERT", global = true)]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "CHORUS_CLIENT_KEY", global = true)]
    pub client_key: Option<PathBuf>,
}

impl Target {
    /// The brokers and the way to connect, from the flags over the context.
    pub fn resolve(&self) -> anyhow::Result<context::Resolved> {
        context::Overrides {
            context: self.context.clone(),
            brokers: self.brokers.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            ca: self.ca.clone(),
            cert: self.client_cert.clone(),
            key: self.client_key.clone(),
        }
        .resolve()
    }
}
