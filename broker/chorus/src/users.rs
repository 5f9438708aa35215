//! `chorus user`: users and their permissions. Permissions are written `ACTION:PATTERN`
//! (`publish:orders`, `consume:orders/*`, `manage:team-a.*`, `admin`); quotas start from the
//! defaults for users, and 0 makes one unlimited. Passwords come from standard input (one line),
//! or are generated and printed once; never from an argument, which `ps` would show.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, bail};
use chorus_machine::{Permission, Quotas};
use chorus_protocol::pb;
use clap::{Args, Subcommand};
use serde_json::json;

use super::commands::{Shown, answer, connect};
use crate::target::Target;
use chorus_broker::command::{permission_to_pb, quotas_from_pb, quotas_to_pb};
use chorus_broker::security::{password, secret};

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user. Without a password option, the user authenticates by client certificate only.
    Create {
        #[command(flatten)]
        user: UserArgs,
    },
    /// Change a user's password, permissions or quotas; what is not given stays.
    Update {
        #[command(flatten)]
        user: UserArgs,
        /// Take every permission away.
        #[arg(long, conflicts_with = "permissions")]
        no_permissions: bool,
    },
    /// Delete a user; the leases it holds end and its subscriptions stop.
    Delete {
        #[command(flatten)]
        target: Target,
        name: String,
    },
    /// A user's permissions and quotas; without a name, your own.
    Describe {
        #[command(flatten)]
        target: Target,
        name: Option<String>,
    },
    /// Every user.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Print the argon2 hash of the password on standard input, for `serve --admin-password-hash-file`.
    HashPassword,
}

/// A user as `create` and `update` take it.
#[derive(Debug, Clone, Args)]
pub struct UserArgs {
    #[command(flatten)]
    pub target: Target,
    pub name: String,
    #[command(flatten)]
    pub password: PasswordSource,
    /// A permission, ACTION:PATTERN; repeat for each. On update, they replace every permission.
    #[arg(long = "permit", value_parser = parse_permission)]
    pub permissions: Vec<Permission>,
    #[command(flatten)]
    pub quotas: QuotaArgs,
}

/// Where a new password comes from.
#[derive(Debug, Clone, Args)]
pub struct PasswordSource {
    /// Read the password from the first line of standard input.
    #[arg(long, conflicts_with = "generate_password")]
    pub password_stdin: bool,
    /// Generate a password and print it once.
    #[arg(long)]
    pub generate_password: bool,
}

/// Quotas; a flag not given keeps the default (on create) or the current value (on update).
#[derive(Debug, Clone, Args)]
pub struct QuotaArgs {
    /// Topics the user may own (0: unlimited) [default: 100].
    #[arg(long)]
    pub max_topics: Option<u64>,
    /// Work groups the user may own (0: unlimited) [default: 100].
    #[arg(long)]
    pub max_groups: Option<u64>,
    /// Connections the user may hold on each broker (0: unlimited) [default: 100].
    #[arg(long)]
    pub max_connections: Option<u32>,
    /// Bytes of requests the user may have in flight on each broker (0: unlimited) [default: 64 MiB].
    #[arg(long)]
    pub max_in_flight_bytes: Option<u64>,
}

impl QuotaArgs {
    fn given(&self) -> bool {
        self.max_topics.is_some()
            || self.max_groups.is_some()
            || self.max_connections.is_some()
            || self.max_in_flight_bytes.is_some()
    }

    /// `base` with the given flags applied; 0 is unlimited.
    fn over(&self, base: Quotas) -> Quotas {
        let limit = |given: Option<u64>, base: Option<u64>| given.map_or(base, |n| (n > 0).then_some(n));
        Quotas {
            topics_max: limit(self.max_topics, base.topics_max),
            groups_max: limit(self.max_groups, base.groups_max),
            connections_max: self.max_connections.map_or(base.connections_max, |n| (n > 0).then_some(n)),
            in_flight_bytes_max: limit(self.max_in_flight_bytes, base.in_flight_bytes_max),
        }
    }
}

fn parse_permission(text: &str) -> Result<Permission, String> {
    Permission::parse(text).map_err(|e| e.to_string())
}

impl PasswordSource {
    /// The new password, if one is asked for; a generated one is printed to standard error.
    fn read(&self) -> anyhow::Result<Option<String>> {
        if self.generate_password {
            let generated = secret::generate();
            eprintln!("password: {generated}");
            return Ok(Some(generated));
        }
        if !self.password_stdin {
            return Ok(None);
        }
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading the password from standard input")?;
        let line = text.lines().next().unwrap_or_default().to_owned();
        if line.is_empty() {
            bail!("no password on standard input");
        }
        Ok(Some(line))
    }
}

pub async fn run(command: UserCommand) -> anyhow::Result<ExitCode> {
    match command {
        UserCommand::HashPassword => {
            let source = PasswordSource { password_stdin: true, generate_password: false };
            let password = source.read()?.unwrap_or_default();
            println!("{}", password::hash(&password)?);
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::Create { user: UserArgs { target, name, password, permissions, quotas } } => {
            let request = pb::CreateUser {
                name,
                password: password.read()?,
                permissions: permissions.iter().map(permission_to_pb).collect(),
                quotas: Some(quotas_to_pb(&quotas.over(Quotas::USER_DEFAULT))),
            };
            answer(&target, request).await
        }
        UserCommand::Update { user: UserArgs { target, name, password, permissions, quotas }, no_permissions } => {
            let new_quotas = match quotas.given() {
                true => Some(quotas_to_pb(&quotas.over(current_quotas(&target, &name).await?))),
                false => None,
            };
            let permissions = (no_permissions || !permissions.is_empty())
                .then(|| pb::PermissionList { permissions: permissions.iter().map(permission_to_pb).collect() });
            let request = pb::UpdateUser { name, password: password.read()?, permissions, quotas: new_quotas };
            answer(&target, request).await
        }
        UserCommand::Delete { target, name } => answer(&target, pb::DeleteUser { name }).await,
        UserCommand::Describe { target, name } => {
            answer(&target, pb::DescribeUser { name: name.unwrap_or_default() }).await
        }
        UserCommand::List { target } => answer(&target, pb::ListUsers::default()).await,
    }
}

impl Shown for pb::UserInfo {
    fn json(&self) -> serde_json::Value {
        user_json(self)
    }

    fn print(&self) {
        print_user(self);
    }
}

/// A JSON array, as the other listings; a block per user as text.
impl Shown for pb::UserList {
    fn json(&self) -> serde_json::Value {
        json!(self.users.iter().map(user_json).collect::<Vec<_>>())
    }

    fn print(&self) {
        self.users.iter().for_each(print_user);
    }
}

async fn current_quotas(target: &Target, name: &str) -> anyhow::Result<Quotas> {
    let client = connect(target).await?;
    let user = client.call(pb::DescribeUser { name: name.into() }).await?;
    Ok(quotas_from_pb(user.quotas.unwrap_or_default()))
}

fn permission_texts(user: &pb::UserInfo) -> Vec<String> {
    let permissions = user.permissions.iter().cloned().map(chorus_broker::command::permission_from_pb);
    permissions.map(|p| p.map_or_else(|e| format!("<{e}>"), |p| p.to_string())).collect()
}

fn limit(value: Option<impl ToString>) -> String {
    value.map_or("unlimited".into(), |v| v.to_string())
}

fn user_json(user: &pb::UserInfo) -> serde_json::Value {
    let quotas = user.quotas.unwrap_or_default();
    json!({
        "name": user.name,
        "permissions": permission_texts(user),
        "has_password": user.has_password,
        "created_ms": user.created_ms,
        "topics_owned": user.topics_owned,
        "groups_owned": user.groups_owned,
        "quotas": {
            "topics_max": quotas.topics_max,
            "groups_max": quotas.groups_max,
            "connections_max": quotas.connections_max,
            "in_flight_bytes_max": quotas.in_flight_bytes_max,
        },
    })
}

fn print_user(user: &pb::UserInfo) {
    let quotas = user.quotas.unwrap_or_default();
    let permissions = permission_texts(user);
    let sign_in = if user.has_password { "password" } else { "certificate only" };
    println!("user {} ({sign_in})", user.name);
    println!("  permissions: {}", if permissions.is_empty() { "none".into() } else { permissions.join(" ") });
    println!(
        "  owns {} topics of {}, {} groups of {}; connections per broker {}; in-flight bytes per broker {}",
        user.topics_owned,
        limit(quotas.topics_max),
        user.groups_owned,
        limit(quotas.groups_max),
        limit(quotas.connections_max),
        limit(quotas.in_flight_bytes_max)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_flags_apply_over_a_base_and_zero_is_unlimited() {
        let flags =
            QuotaArgs { max_topics: Some(5), max_groups: Some(0), max_connections: None, max_in_flight_bytes: None };
        let quotas = flags.over(Quotas::USER_DEFAULT);
        assert_eq!(quotas.topics_max, Some(5));
        assert_eq!(quotas.groups_max, None);
        assert_eq!(quotas.connections_max, Quotas::USER_DEFAULT.connections_max);
        assert!(flags.given());
    }
}
