//! Who may do what. Every command carries the [`Actor`] that submitted it, and the machine checks
//! the actor's permissions against the users in the replicated state before the command runs, so
//! every broker decides the same way at the same log position: a permission granted or revoked
//! takes effect exactly at the entry that changed it. The broker checks reads with the same
//! functions against its applied state.
//!
//! A [`Permission`] is an [`Action`] on a [`Pattern`]. A pattern is matched against a resource:
//! a topic name for publish, subscribe and topic management, and `topic/group` for consuming and
//! group management. Topic and group names cannot hold `/`, so `topic/group` is unambiguous.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::NAME_BYTES_MAX;

/// A permission or pattern written wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermissionError {
    #[error("pattern {pattern:?} {why}")]
    Pattern { pattern: String, why: &'static str },
    #[error("unknown action {action:?}: one of publish, subscribe, consume, manage, admin")]
    Action { action: String },
}

/// Who submitted a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    /// A broker's own work: pulses, the first admin, membership records. Never checked.
    Broker,
    /// A client of a broker that runs without authentication: allowed everything a client may do.
    Anonymous,
    /// An authenticated user, checked against its permissions.
    User(String),
}

impl Actor {
    /// The name audit records give the actor.
    pub fn label(&self) -> &str {
        match self {
            Actor::Broker => "broker",
            Actor::Anonymous => "anonymous",
            Actor::User(name) => name,
        }
    }
}

/// What a permission allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Action {
    /// Publish to a topic.
    Publish,
    /// Subscribe to a topic, create, delete and commit its durable subscriptions.
    Subscribe,
    /// Lease, ack, nack and extend in a work group (`topic/group`).
    Consume,
    /// Create and delete topics (`topic`) and work groups (`topic/group`).
    Manage,
    /// Everything: users, membership, and every action on every resource.
    Admin,
}

impl Action {
    pub const ALL: [Action; 5] = [Action::Publish, Action::Subscribe, Action::Consume, Action::Manage, Action::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::Consume => "consume",
            Action::Manage => "manage",
            Action::Admin => "admin",
        }
    }
}

/// A resource name given exactly, or a prefix followed by `*` (`*` alone matches everything).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pattern(String);

/// Longest pattern: a topic, a slash, a group, and the star.
pub const PATTERN_BYTES_MAX: usize = 2 * NAME_BYTES_MAX + 2;

const _: () = assert!(PATTERN_BYTES_MAX == 258, "the error message says 258");

impl Pattern {
    /// Every resource.
    pub fn any() -> Pattern {
        Pattern("*".into())
    }

    /// Checks `text`: name characters and at most one `/`, with an optional trailing `*`.
    pub fn parse(text: &str) -> Result<Pattern, PermissionError> {
        let invalid = |why| Err(PermissionError::Pattern { pattern: text.to_owned(), why });
        if text.is_empty() || text.len() > PATTERN_BYTES_MAX {
            return invalid("must be 1 to 258 bytes");
        }
        let body = text.strip_suffix('*').unwrap_or(text);
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/');
        if !body.chars().all(allowed) {
            return invalid("may hold only letters, digits, '.', '_', '-', one '/' and a final '*'");
        }
        if body.matches('/').count() > 1 {
            return invalid("names at most a topic and a group");
        }
        Ok(Pattern(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, resource: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => resource.starts_with(prefix),
            None => self.0 == resource,
        }
    }

    /// Whether the pattern matches `topic` itself or some resource below it (`topic/...`).
    fn reaches_topic(&self, topic: &str) -> bool {
        if self.matches(topic) {
            return true;
        }
        let below = format!("{topic}/");
        match self.0.strip_suffix('*') {
            Some(prefix) => prefix.starts_with(&below) || below.starts_with(prefix),
            None => self.0.starts_with(&below),
        }
    }
}

/// One action on the resources a pattern matches. Written `action:pattern`, or `admin`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Permission {
    pub action: Action,
    pub pattern: Pattern,
}

impl Permission {
    pub fn new(action: Action, pattern: Pattern) -> Permission {
        Permission { action, pattern }
    }

    pub fn admin() -> Permission {
        Permission::new(Action::Admin, Pattern::any())
    }

    /// Parses `publish:orders`, `consume:orders/*`, `manage:*` or `admin`.
    pub fn parse(text: &str) -> Result<Permission, PermissionError> {
        let (action, pattern) = text.split_once(':').unwrap_or((text, "*"));
        let action = Action::ALL
            .into_iter()
            .find(|a| a.name() == action)
            .ok_or_else(|| PermissionError::Action { action: action.to_owned() })?;
        Ok(Permission::new(action, Pattern::parse(pattern)?))
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.action {
            Action::Admin => f.write_str("admin"),
            action => write!(f, "{}:{}", action.name(), self.pattern.as_str()),
        }
    }
}

/// The resource of a work group: `topic/group`.
pub fn group_resource(topic: &str, group: &str) -> String {
    format!("{topic}/{group}")
}

/// Whether `permissions` allow `action` on `resource`. Admin allows everything.
pub fn allows(permissions: &[Permission], action: Action, resource: &str) -> bool {
    permissions.iter().any(|p| p.action == Action::Admin || (p.action == action && p.pattern.matches(resource)))
}

/// Whether `permissions` allow anything on `topic` or its groups: enough to see it listed and
/// described.
pub fn sees_topic(permissions: &[Permission], topic: &str) -> bool {
    permissions.iter().any(|p| p.action == Action::Admin || p.pattern.reaches_topic(topic))
}

pub fn is_admin(permissions: &[Permission]) -> bool {
    permissions.iter().any(|p| p.action == Action::Admin)
}

/// What a user may hold at once. `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Quotas {
    /// Topics the user created and that still exist.
    pub topics_max: Option<u64>,
    /// Work groups the user created and that still exist.
    pub groups_max: Option<u64>,
    /// Connections the user may hold open on one broker.
    pub connections_max: Option<u32>,
    /// Bytes of requests the user may have in flight on one broker.
    pub in_flight_bytes_max: Option<u64>,
}

impl Quotas {
    pub const UNLIMITED: Quotas =
        Quotas { topics_max: None, groups_max: None, connections_max: None, in_flight_bytes_max: None };

    /// What a new user gets unless told otherwise: enough for an application, not enough for one
    /// client to use up the cluster's topics (10,000) or a broker's connections (1,024).
    pub const USER_DEFAULT: Quotas = Quotas {
        topics_max: Some(100),
        groups_max: Some(100),
        connections_max: Some(100),
        in_flight_bytes_max: Some(64 * 1024 * 1024),
    };
}

/// Names starting with `.` are the broker's own (`.audit`): clients cannot create, delete or
/// publish to them.
pub fn is_reserved(topic: &str) -> bool {
    topic.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn perms(texts: &[&str]) -> Vec<Permission> {
        texts.iter().map(|t| Permission::parse(t).unwrap()).collect()
    }

    #[test]
    fn patterns_match_exactly_or_by_prefix() {
        let exact = Pattern::parse("orders").unwrap();
        assert!(exact.matches("orders"));
        assert!(!exact.matches("orders2") && !exact.matches("orders/g"));
        let prefix = Pattern::parse("orders*").unwrap();
        assert!(prefix.matches("orders") && prefix.matches("orders.eu") && prefix.matches("orders/g"));
        assert!(!prefix.matches("order"));
        assert!(Pattern::any().matches("anything/at-all"));
        for bad in ["", "a b", "a/b/c", "*x", "a**", "é"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn permissions_parse_and_print() {
        for text in ["publish:orders", "consume:orders/*", "manage:*", "admin", "subscribe:a.b-c_d"] {
            assert_eq!(Permission::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(Permission::parse("publish").unwrap().to_string(), "publish:*");
        assert!(Permission::parse("read:orders").is_err());
        assert!(Permission::parse("publish:").is_err());
    }

    #[test]
    fn actions_are_distinct_and_admin_allows_all() {
        let p = perms(&["publish:orders", "consume:orders/billing"]);
        assert!(allows(&p, Action::Publish, "orders"));
        assert!(!allows(&p, Action::Subscribe, "orders"));
        assert!(allows(&p, Action::Consume, "orders/billing"));
        assert!(!allows(&p, Action::Consume, "orders/other"));
        assert!(!allows(&p, Action::Manage, "orders"));
        let admin = perms(&["admin"]);
        assert!(Action::ALL.iter().all(|&a| allows(&admin, a, "x")));
        assert!(is_admin(&admin) && !is_admin(&p));
    }

    #[test]
    fn seeing_a_topic_takes_a_permission_on_it_or_below_it() {
        let p = perms(&["consume:orders/billing", "publish:logs.*"]);
        assert!(sees_topic(&p, "orders"), "a group permission reaches its topic");
        assert!(sees_topic(&p, "logs.eu"));
        assert!(!sees_topic(&p, "orders2") && !sees_topic(&p, "logs"));
        assert!(sees_topic(&perms(&["manage:ord*"]), "orders"));
        assert!(sees_topic(&perms(&["consume:orders/*"]), "orders"));
        assert!(!sees_topic(&perms(&["consume:orders/*"]), "order"));
    }

    proptest! {
        /// A prefix pattern matches exactly the resources that start with its prefix, and
        /// whatever a pattern matches under a topic, it reaches that topic.
        #[test]
        fn prefix_semantics(prefix in "[a-c]{0,3}", topic in "[a-c]{1,3}", group in "[a-c]{1,2}") {
            let pattern = Pattern::parse(&format!("{prefix}*")).unwrap();
            let resource = group_resource(&topic, &group);
            prop_assert_eq!(pattern.matches(&topic), topic.starts_with(&prefix));
            if pattern.matches(&resource) {
                prop_assert!(pattern.reaches_topic(&topic));
            }
        }
    }
}
