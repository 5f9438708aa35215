//! The audit trail: every user, permission and membership change is also a message in the
//! reserved topic [`AUDIT_TOPIC`], published by the entry that made the change. So the trail is on
//! the same ordered log as everything else, and an admin reads it as any subscriber would.
//!
//! A record's payload is one JSON object (`event`, `actor`, then the event's fields); its headers
//! repeat `chorus-audit-event` and `chorus-audit-actor` for filtering without parsing.

use bytes::Bytes;

use crate::access::Actor;
use crate::command::{Header, NewMessage, TopicConfig};
use crate::ctx::{Ctx, Res};
use crate::limits::AUDIT_MESSAGES_MAX;
use crate::records::TopicRecord;
use crate::store::Store;
use crate::{query, retention, topic};

/// Clients can subscribe to it (with the subscribe permission on it, or admin), never publish.
pub const AUDIT_TOPIC: &str = ".audit";

/// A field of an audit record: a string, or a list of strings.
#[derive(Debug, Clone)]
pub(crate) enum Field {
    Text(String),
    List(Vec<String>),
}

/// Publishes one audit record of `event` by `actor`.
pub(crate) fn record<S: Store>(ctx: &mut Ctx<'_, S>, actor: &Actor, event: &str, fields: &[(&str, Field)]) -> Res<()> {
    let mut topic = audit_topic(ctx)?;
    let mut json = String::from("{");
    push_pair(&mut json, "event", &Field::Text(event.to_owned()));
    push_pair(&mut json, "actor", &Field::Text(actor.label().to_owned()));
    for (name, value) in fields {
        push_pair(&mut json, name, value);
    }
    json.push('}');
    let header =
        |name: &str, value: &str| Header { name: name.to_owned(), value: Bytes::copy_from_slice(value.as_bytes()) };
    let message = NewMessage {
        key: None,
        headers: vec![header("chorus-audit-event", event), header("chorus-audit-actor", actor.label())],
        payload: Bytes::from(json),
        not_before_ms: None,
    };
    topic::append(ctx, &mut topic, &[message])?;
    retention::trim(ctx, &mut topic, None)?;
    ctx.save_topic(&topic)
}

/// The audit topic, created on first use. It counts as a topic but belongs to no user.
fn audit_topic<S: Store>(ctx: &mut Ctx<'_, S>) -> Res<TopicRecord> {
    match query::topic(&*ctx.store, AUDIT_TOPIC)? {
        Some(topic) => Ok(topic),
        None => {
            let config = TopicConfig { messages_max: Some(AUDIT_MESSAGES_MAX), ..TopicConfig::default() };
            topic::insert(ctx, AUDIT_TOPIC, &config)
        }
    }
}

fn push_pair(json: &mut String, name: &str, value: &Field) {
    if json.len() > 1 {
        json.push(',');
    }
    push_string(json, name);
    json.push(':');
    match value {
        Field::Text(text) => push_string(json, text),
        Field::List(items) => {
            json.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    json.push(',');
                }
                push_string(json, item);
            }
            json.push(']');
        }
    }
}

/// A JSON string literal, escaped.
fn push_string(json: &mut String, text: &str) {
    json.push('"');
    for c in text.chars() {
        match c {
            '"' => json.push_str("\\\""),
            '\\' => json.push_str("\\\\"),
            c if (c as u32) < 0x20 => json.push_str(&format!("\\u{:04x}", c as u32)),
            c => json.push(c),
        }
    }
    json.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_escaped_json() {
        let mut json = String::from("{");
        push_pair(&mut json, "a\"b", &Field::Text("x\\y\n".into()));
        push_pair(&mut json, "list", &Field::List(vec!["p:q".into(), String::new()]));
        json.push('}');
        assert_eq!(json, r#"{"a\"b":"x\\y\u000a","list":["p:q",""]}"#);
    }
}
