//! Who a client connection acts as, settled once, at its Hello.
//!
//! - A broker that does not authenticate clients makes every connection anonymous.
//! - Otherwise the client names a user: by name and password in Hello, checked against the
//!   user's stored hash, or by a TLS client certificate whose common name is the user. Given both,
//!   they must name the same user. Either way the user must exist in this broker's applied state.
//! - A failure answers UNAUTHORIZED, with one message for an unknown user and a wrong password.
//! - A user at its connection quota on this broker gets QUOTA_EXCEEDED.

use chorus_machine::{Actor, Quotas, UserRecord, query};
use chorus_protocol::pb::{self, ErrorCode};

use super::respond::{error, unreadable};
use super::sessions::SessionUse;
use super::state::Server;

/// A connection's identity, and what it holds against its user's quotas.
#[derive(Debug)]
pub struct Session {
    pub actor: Actor,
    pub usage: Option<SessionUse>,
}

impl Session {
    /// The user's name, or empty for an anonymous connection.
    pub fn user(&self) -> &str {
        match &self.actor {
            Actor::User(name) => name,
            Actor::Broker | Actor::Anonymous => "",
        }
    }
}

/// Authenticates a Hello. `certificate_user` is the user a verified client certificate names.
pub async fn login(server: &Server, hello: &pb::Hello, certificate_user: Option<&str>) -> Result<Session, pb::Error> {
    if !server.broker.config.security.authenticate_clients {
        return Ok(Session { actor: Actor::Anonymous, usage: None });
    }
    let user = match (&hello.credentials, certificate_user) {
        (Some(credentials), certified) => {
            if certified.is_some_and(|name| name != credentials.user) {
                return Err(unauthorized("the client certificate names another user than the credentials"));
            }
            let user = lookup(server, &credentials.user)?;
            let stored = user.as_ref().and_then(|u| u.password_hash.as_deref());
            if !server.passwords.check(&credentials.user, stored, &credentials.password).await {
                return Err(unauthorized("unknown user or wrong password"));
            }
            user.expect("a password matched, so the user exists")
        }
        (None, Some(name)) => lookup(server, name)?
            .ok_or_else(|| unauthorized(&format!("the client certificate names {name:?}, who is not a user")))?,
        (None, None) => {
            return Err(unauthorized("this broker requires a user: a name and password, or a client certificate"));
        }
    };
    let quotas: Quotas = user.quotas;
    let usage =
        server.sessions.open(&user.name, quotas).map_err(|quota| error(ErrorCode::QuotaExceeded, quota.to_string()))?;
    Ok(Session { actor: Actor::User(user.name), usage: Some(usage) })
}

fn lookup(server: &Server, name: &str) -> Result<Option<UserRecord>, pb::Error> {
    let store = server.broker.read()?;
    query::user(&store, name).map_err(unreadable)
}

fn unauthorized(why: &str) -> pb::Error {
    error(ErrorCode::Unauthorized, why)
}
