//! How a failed command tells its user why: one line, each cause said once, the broker's words
//! rather than its code, and a hint at what to do next where there is an obvious one.

use chorus_consumers::{ClientError, ServerError, TlsError};
use chorus_protocol::pb::ErrorCode;

/// The one line `chorus` prints for a failed command (without the `chorus: ` prefix).
pub fn line(error: &anyhow::Error) -> String {
    let text = causes(error);
    match hint(error) {
        Some(hint) => format!("{text} (hint: {hint})"),
        None => text,
    }
}

/// The error's causes joined by `: `, each said once (many errors print their source in their own
/// text as well), ending at the broker's own words if it refused.
fn causes(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let refusal = match cause.downcast_ref::<ClientError>() {
            Some(ClientError::Server(server)) => Some(server.message.clone()),
            _ => None,
        };
        let last = refusal.is_some();
        let text = refusal.unwrap_or_else(|| cause.to_string());
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
        if last {
            break;
        }
    }
    line
}

fn client_error(error: &anyhow::Error) -> Option<&ClientError> {
    error.chain().find_map(|cause| cause.downcast_ref::<ClientError>())
}

fn server_error(error: &anyhow::Error) -> Option<&ServerError> {
    match client_error(error)? {
        ClientError::Server(server) => Some(server),
        _ => None,
    }
}

fn hint(error: &anyhow::Error) -> Option<String> {
    if let Some(server) = server_error(error) {
        return server_hint(server);
    }
    match client_error(error)? {
        ClientError::Connect { .. } | ClientError::Exhausted(_) | ClientError::Timeout(_) => {
            Some("is the cluster up? `chorus status` shows it; `chorus up` starts a local one".into())
        }
        ClientError::Tls(TlsError::Handshake { .. }) => Some(
            "the broker's certificate is not one the CA in use signed, or it wants a client certificate; \
             check --ca and the context (`--context`, `CHORUS_CONTEXT`)"
                .into(),
        ),
        _ => None,
    }
}

fn server_hint(server: &ServerError) -> Option<String> {
    let name = quoted(&server.message);
    Some(match server.code {
        ErrorCode::UnknownTopic => match name {
            Some(name) => format!("create it with `chorus topic create {name}`"),
            None => "`chorus topic list` shows the topics".into(),
        },
        ErrorCode::UnknownGroup => {
            "`chorus group list TOPIC` shows a topic's groups; `chorus group create` makes one".into()
        }
        ErrorCode::UnknownSubscription => "`chorus topic describe TOPIC` shows its subscriptions".into(),
        ErrorCode::Unauthorized => "give a user and password (--user, --password or CHORUS_PASSWORD)".into(),
        ErrorCode::Forbidden => "an admin can grant it: `chorus user update NAME --permit ACTION:PATTERN`".into(),
        ErrorCode::Unavailable | ErrorCode::NotLeader => {
            "a majority of brokers must be up and agree on a leader; `chorus status` shows them".into()
        }
        _ => return None,
    })
}

/// The first `"…"` in a broker's message: the name it refused.
fn quoted(message: &str) -> Option<&str> {
    let start = message.find('"')? + 1;
    let len = message[start..].find('"')?;
    Some(&message[start..start + len]).filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: ErrorCode, message: &str) -> anyhow::Error {
        let server = ServerError { code, message: message.into(), leader_id: None, leader_addr: None };
        anyhow::Error::new(ClientError::Server(server)).context("publishing")
    }

    #[test]
    fn a_refusal_is_one_line_with_a_hint() {
        let line = line(&refused(ErrorCode::UnknownTopic, "unknown topic \"nosuch\""));
        let expected = "publishing: unknown topic \"nosuch\" (hint: create it with `chorus topic create nosuch`)";
        assert_eq!(line, expected);
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let error = anyhow::Error::new(ClientError::Connect { addr: "127.0.0.1:1".into(), source: io })
            .context("connecting to 127.0.0.1:1");
        let line = line(&error);
        assert_eq!(line.matches("Connection refused").count(), 1, "{line}");
        assert!(line.starts_with("connecting to 127.0.0.1:1: cannot connect to 127.0.0.1:1"), "{line}");
        assert!(line.contains("hint: is the cluster up?"), "{line}");
    }

    #[test]
    fn other_errors_keep_their_words() {
        assert_eq!(line(&anyhow::anyhow!("bad --from")), "bad --from");
        assert_eq!(
            line(&refused(ErrorCode::InvalidArgument, "invalid argument: x")),
            "publishing: invalid argument: x"
        );
    }
}
