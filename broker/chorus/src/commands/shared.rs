//! What the client commands share: connecting to the cluster, and reading start positions and
//! durations from flags.

use std::time::Duration;

use anyhow::Context;
use chorus_consumers::{Client, ClientConfig, Start};
use chorus_protocol::pb;

use crate::target::Target;

pub async fn connect(target: &Target) -> anyhow::Result<Client> {
    connect_with(target, |_| {}).await
}

/// Connects with the target's configuration, adjusted by `adjust`.
pub async fn connect_with(target: &Target, adjust: impl FnOnce(&mut ClientConfig)) -> anyhow::Result<Client> {
    let resolved = target.resolve()?;
    let mut config = resolved.client_config("chorus-cli")?;
    adjust(&mut config);
    Client::with_config(config).await.with_context(|| format!("connecting to {}", resolved.brokers.join(",")))
}

/// A start position as `--from` gives it: `earliest`, `latest`, a sequence, or `time:MS` (ms
/// since the Unix epoch: the first message committed at or after it).
pub fn parse_start(text: &str) -> anyhow::Result<Start> {
    let wrong = || format!("--from takes earliest, latest, a sequence or time:MS, not {text:?}");
    Ok(match text {
        "earliest" => Start::Earliest,
        "latest" => Start::Latest,
        other => match other.strip_prefix("time:") {
            Some(time_ms) => Start::TimeMs(time_ms.parse().with_context(wrong)?),
            None => Start::Seq(other.parse().with_context(wrong)?),
        },
    })
}

/// A `--from` start position as the protocol carries it.
pub fn start_to_pb(text: &str) -> anyhow::Result<pb::StartPosition> {
    use pb::start_position::Position;
    let position = match parse_start(text)? {
        Start::Earliest => Position::Earliest(pb::Empty {}),
        Start::Latest => Position::Latest(pb::Empty {}),
        Start::Seq(seq) => Position::Seq(seq),
        Start::TimeMs(time_ms) => Position::TimeMs(time_ms),
    };
    Ok(pb::StartPosition { position: Some(position) })
}

/// A duration as flags take it: `250ms`, `10s`, `2m`, `1h`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 500ms, 10s or 2m"))?;
    let ms = match unit {
        "ms" => number,
        "" | "s" => number.saturating_mul(1000),
        "m" => number.saturating_mul(60_000),
        "h" => number.saturating_mul(3_600_000),
        _ => return Err(format!("{text:?}: the unit is one of ms, s, m, h")),
    };
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn starts_take_times() {
        assert_eq!(parse_start("time:1700000000000").unwrap(), Start::TimeMs(1_700_000_000_000));
        assert_eq!(parse_start("7").unwrap(), Start::Seq(7));
        assert!(parse_start("time:soon").is_err());
    }
}
