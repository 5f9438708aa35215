//! What a client may read, judged by its permissions in this broker's applied state, with the
//! rules the state machine applies to writes (`chorus_machine::access`): describing and listing,
//! subscribing, and the lease long-poll's wait. A revocation reaches a read once this broker has
//! applied it; an open subscription checks again before every delivery.

use chorus_machine::access::{self, Action, Actor, Permission};
use chorus_machine::{StoreRead, query};
use chorus_protocol::pb::{self, ErrorCode};

use super::respond::{error, unreadable};

/// What a read needs.
#[derive(Debug, Clone, Copy)]
pub enum Needs<'a> {
    /// Some permission on the topic or below it.
    SeeTopic(&'a str),
    /// `action` on `resource`.
    Allowed(Action, &'a str),
    /// Admin, or being the user named.
    AdminOrSelf(&'a str),
    Admin,
}

/// The actor's permissions, or `None` for an actor who is not checked (anonymous, a broker).
pub fn permissions(store: &impl StoreRead, actor: &Actor) -> Result<Option<Vec<Permission>>, pb::Error> {
    match actor {
        Actor::Broker | Actor::Anonymous => Ok(None),
        Actor::User(name) => match query::user(store, name).map_err(unreadable)? {
            Some(user) => Ok(Some(user.permissions)),
            None => Err(forbidden(format!("user {name:?} does not exist"))),
        },
    }
}

/// Refuses with FORBIDDEN unless `actor` has what the read `needs`.
pub fn check(store: &impl StoreRead, actor: &Actor, needs: Needs<'_>) -> Result<(), pb::Error> {
    let Some(permissions) = permissions(store, actor)? else { return Ok(()) };
    let name = match actor {
        Actor::User(name) => name.as_str(),
        Actor::Broker | Actor::Anonymous => "",
    };
    let allowed = match needs {
        Needs::SeeTopic(topic) => access::sees_topic(&permissions, topic),
        Needs::Allowed(action, resource) => access::allows(&permissions, action, resource),
        Needs::AdminOrSelf(user) => user == name || access::is_admin(&permissions),
        Needs::Admin => access::is_admin(&permissions),
    };
    if allowed {
        return Ok(());
    }
    Err(forbidden(match needs {
        Needs::SeeTopic(topic) => format!("user {name:?} has no permission on topic {topic:?}"),
        Needs::Allowed(action, resource) => format!("user {name:?} may not {} {resource:?}", action.name()),
        Needs::AdminOrSelf(user) => format!("user {name:?} is not an admin, nor {user:?}"),
        Needs::Admin => format!("user {name:?} is not an admin"),
    }))
}

/// Whether a listing shows `topic` to an actor with `permissions` (`None`: unchecked). Reserved
/// topics are described by name, never listed.
pub fn lists_topic(permissions: Option<&[Permission]>, topic: &str) -> bool {
    !access::is_reserved(topic) && permissions.is_none_or(|p| access::sees_topic(p, topic))
}

fn forbidden(why: String) -> pb::Error {
    error(ErrorCode::Forbidden, why)
}
