//! Checks on client-supplied values, done before a command writes anything.

use crate::command::{GroupConfig, NewMessage, TopicConfig};
use crate::limits::*;
use crate::outcome::MachineError;

type Checked = Result<(), MachineError>;

fn invalid(message: String) -> Checked {
    Err(MachineError::InvalidArgument(message))
}

/// Topic, group, subscription and consumer names: 1 to 128 bytes of `[A-Za-z0-9._-]`, not
/// starting with a dot (names beginning with `.` are kept for internal use).
pub fn name(kind: &str, name: &str) -> Checked {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return invalid(format!("{kind} name must be 1 to {NAME_BYTES_MAX} bytes, got {}", name.len()));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.starts_with('.') || !name.chars().all(allowed) {
        return invalid(format!(
            "{kind} name {name:?} may hold only letters, digits, '.', '_' and '-', and must not start with '.'"
        ));
    }
    Ok(())
}

pub fn topic_config(config: &TopicConfig) -> Checked {
    if config.messages_max == Some(0) || config.bytes_max == Some(0) || config.age_ms_max == Some(0) {
        return invalid("retention limits must be positive when set".into());
    }
    if config.dedup_window_ms > DEDUP_WINDOW_MS_MAX {
        return invalid(format!("dedup window is at most {DEDUP_WINDOW_MS_MAX} ms"));
    }
    Ok(())
}

pub fn group_config(config: &GroupConfig) -> Checked {
    lease_ms(config.lease_ms_default)?;
    if let Some(topic) = &config.dead_letter_topic {
        name("dead-letter topic", topic)?;
    }
    Ok(())
}

pub fn lease_ms(lease_ms: u64) -> Checked {
    if !(LEASE_MS_MIN..=LEASE_MS_MAX).contains(&lease_ms) {
        return invalid(format!("lease must be {LEASE_MS_MIN} to {LEASE_MS_MAX} ms, got {lease_ms}"));
    }
    Ok(())
}

/// A lease request's own arguments; `lease_ms` of `None` means the group's default.
pub fn lease(consumer: &str, count_max: u32, lease_ms: Option<u64>) -> Checked {
    name("consumer", consumer)?;
    if count_max == 0 || count_max > LEASE_COUNT_MAX {
        return invalid(format!("lease 1 to {LEASE_COUNT_MAX} messages, not {count_max}"));
    }
    lease_ms.map_or(Ok(()), self::lease_ms)
}

pub fn tokens(tokens: &[u64]) -> Checked {
    if tokens.is_empty() || tokens.len() > SETTLE_TOKENS_MAX {
        return invalid(format!("1 to {SETTLE_TOKENS_MAX} tokens per request, got {}", tokens.len()));
    }
    Ok(())
}

pub fn producer_id(id: &str) -> Checked {
    if id.is_empty() || id.len() > PRODUCER_ID_BYTES_MAX {
        return invalid(format!("producer id must be 1 to {PRODUCER_ID_BYTES_MAX} bytes"));
    }
    Ok(())
}

pub fn messages(messages: &[NewMessage]) -> Checked {
    if messages.is_empty() {
        return invalid("a publish needs at least one message".into());
    }
    if messages.len() > PUBLISH_MESSAGES_MAX {
        return Err(MachineError::TooLarge(format!(
            "{} messages in one publish, at most {PUBLISH_MESSAGES_MAX}",
            messages.len()
        )));
    }
    messages.iter().try_for_each(message)
}

fn message(message: &NewMessage) -> Checked {
    let too_large = |what: String| Err(MachineError::TooLarge(what));
    if message.payload.len() > PAYLOAD_BYTES_MAX {
        return too_large(format!("payload of {} bytes, at most {PAYLOAD_BYTES_MAX}", message.payload.len()));
    }
    if message.key.as_ref().is_some_and(|k| k.is_empty() || k.len() > KEY_BYTES_MAX) {
        return invalid(format!("a key must be 1 to {KEY_BYTES_MAX} bytes"));
    }
    if message.headers.len() > HEADERS_MAX {
        return too_large(format!("{} headers, at most {HEADERS_MAX}", message.headers.len()));
    }
    for header in &message.headers {
        if header.name.is_empty() || header.name.len() > HEADER_NAME_BYTES_MAX {
            return invalid(format!("header names must be 1 to {HEADER_NAME_BYTES_MAX} bytes"));
        }
        if header.value.len() > HEADER_VALUE_BYTES_MAX {
            return too_large(format!(
                "header value of {} bytes, at most {HEADER_VALUE_BYTES_MAX}",
                header.value.len()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_and_plain() {
        assert!(name("topic", "orders.eu-1_v2").is_ok());
        assert!(name("topic", "").is_err());
        assert!(name("topic", ".internal").is_err());
        assert!(name("topic", "has space").is_err());
        assert!(name("topic", "slash/y").is_err());
        assert!(name("topic", "é").is_err());
        assert!(name("topic", &"a".repeat(NAME_BYTES_MAX)).is_ok());
        assert!(name("topic", &"a".repeat(NAME_BYTES_MAX + 1)).is_err());
    }

    #[test]
    fn oversized_messages_are_too_large() {
        let big = NewMessage { payload: vec![0; PAYLOAD_BYTES_MAX + 1].into(), ..NewMessage::default() };
        assert!(matches!(messages(&[big]), Err(MachineError::TooLarge(_))));
        let many = vec![NewMessage::default(); PUBLISH_MESSAGES_MAX + 1];
        assert!(matches!(messages(&many), Err(MachineError::TooLarge(_))));
        let empty_key = NewMessage { key: Some(bytes::Bytes::new()), ..NewMessage::default() };
        assert!(matches!(messages(&[empty_key]), Err(MachineError::InvalidArgument(_))));
    }

    #[test]
    fn leases_are_bounded() {
        assert!(lease_ms(LEASE_MS_MIN - 1).is_err());
        assert!(lease_ms(LEASE_MS_MIN).is_ok());
        assert!(lease_ms(LEASE_MS_MAX + 1).is_err());
        assert!(tokens(&[]).is_err());
    }
}
