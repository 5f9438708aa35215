//! User management requests. A password is hashed where the command is proposed, on the leader,
//! so only its hash enters the log; a follower forwards the request instead of hashing it twice.
//! Describing and listing read this broker's applied state: admins see everyone, a user itself.

use std::sync::Arc;

use chorus_machine::access::Actor;
use chorus_machine::limits::LIST_MAX;
use chorus_machine::{Command, NewUser, Quotas, UserRecord, UserUpdate, query};
use chorus_protocol::pb::{self, ErrorCode, server_frame::Body};

use super::access::{self, Needs};
use super::handler::{Answer, Origin, done, forward, invalid, write};
use super::respond::{error, internal, propose_error};
use crate::command;
use crate::node::Broker;
use crate::proposer::ProposeError;
use crate::security::password;

pub(super) async fn create(broker: &Arc<Broker>, request: pb::CreateUser, origin: Origin<'_>) -> Answer {
    if let Some(forwarded) = forward_unless_leader(broker, origin).await {
        return forwarded;
    }
    let new = NewUser {
        name: request.name,
        password_hash: hash(request.password).await?,
        permissions: request
            .permissions
            .into_iter()
            .map(command::permission_from_pb)
            .collect::<Result<_, _>>()
            .map_err(invalid)?,
        // No quotas given: a user's defaults; given, an absent field is unlimited.
        quotas: request.quotas.map_or(Quotas::USER_DEFAULT, command::quotas_from_pb),
    };
    write(broker, Command::CreateUser(new), origin, done).await
}

pub(super) async fn update(broker: &Arc<Broker>, request: pb::UpdateUser, origin: Origin<'_>) -> Answer {
    if let Some(forwarded) = forward_unless_leader(broker, origin).await {
        return forwarded;
    }
    let permissions = match request.permissions {
        Some(list) => Some(
            list.permissions.into_iter().map(command::permission_from_pb).collect::<Result<_, _>>().map_err(invalid)?,
        ),
        None => None,
    };
    let update = UserUpdate {
        name: request.name,
        password_hash: hash(request.password).await?,
        permissions,
        quotas: request.quotas.map(command::quotas_from_pb),
    };
    write(broker, Command::UpdateUser(update), origin, done).await
}

/// On a follower, the leader's answer to the request; `None` on the leader (or when no leader is
/// known, and the proposal will say so).
async fn forward_unless_leader(broker: &Arc<Broker>, origin: Origin<'_>) -> Option<Answer> {
    if broker.is_leader() || origin.forwarded {
        return None;
    }
    let leader = broker.leader()?;
    let timeout = std::time::Duration::from_millis(broker.config.limits.write_timeout_ms);
    Some(forward(broker, &leader, origin, timeout).await)
}

async fn hash(password: Option<String>) -> Result<Option<String>, pb::Error> {
    let Some(password) = password else { return Ok(None) };
    let hashed = tokio::task::spawn_blocking(move || password::hash(&password))
        .await
        .map_err(|e| propose_error(&ProposeError::Internal(e.to_string())))?;
    hashed.map(Some).map_err(|e| error(ErrorCode::InvalidArgument, e.to_string()))
}

/// A user's permissions and quotas; an empty name is the actor itself.
pub(super) fn describe(broker: &Broker, actor: &Actor, name: &str) -> Answer {
    let name = match (name, actor) {
        ("", Actor::User(own)) => own.as_str(),
        ("", Actor::Broker | Actor::Anonymous) => {
            return Err(error(ErrorCode::InvalidArgument, "this connection is anonymous: name a user"));
        }
        (name, _) => name,
    };
    let store = broker.read().map_err(|e| propose_error(&e))?;
    access::check(&store, actor, Needs::AdminOrSelf(name))?;
    let user = query::user(&store, name)
        .map_err(internal)?
        .ok_or_else(|| error(ErrorCode::UnknownUser, format!("unknown user {name:?}")))?;
    Ok(Body::User(user_info(&user)))
}

pub(super) fn list(broker: &Broker, actor: &Actor, request: &pb::ListUsers) -> Answer {
    let store = broker.read().map_err(|e| propose_error(&e))?;
    access::check(&store, actor, Needs::Admin)?;
    let limit = if request.limit == 0 { LIST_MAX } else { request.limit as usize };
    let users = query::users(&store, &request.after, limit).map_err(internal)?;
    Ok(Body::Users(pb::UserList { users: users.iter().map(user_info).collect() }))
}

/// A user as clients see it: never its password hash.
pub fn user_info(user: &UserRecord) -> pb::UserInfo {
    pb::UserInfo {
        name: user.name.clone(),
        permissions: user.permissions.iter().map(command::permission_to_pb).collect(),
        quotas: Some(command::quotas_to_pb(&user.quotas)),
        has_password: user.password_hash.is_some(),
        created_ms: user.created_ms,
        topics_owned: user.topics_owned,
        groups_owned: user.groups_owned,
    }
}
