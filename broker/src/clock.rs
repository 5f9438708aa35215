//! The broker's clock, in milliseconds since the Unix epoch. A real broker reads the system
//! clock. A simulation reads tokio's clock, which it pauses and advances, from a fixed origin, so
//! the time stamped into entries is part of what a seed replays.

/// Where a broker's time comes from.
#[derive(Debug, Clone, Copy, Default)]
pub enum Clock {
    /// The system clock.
    #[default]
    System,
    /// tokio's clock: `origin_ms` at `origin`, then whatever tokio says has elapsed.
    Tokio { origin: tokio::time::Instant, origin_ms: u64 },
}

impl Clock {
    /// tokio's clock, reading `origin_ms` now.
    pub fn tokio_from(origin_ms: u64) -> Clock {
        Clock::Tokio { origin: tokio::time::Instant::now(), origin_ms }
    }

    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
            }
            Clock::Tokio { origin, origin_ms } => origin_ms + origin.elapsed().as_millis() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Clock;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_follows_paused_time() {
        let clock = Clock::tokio_from(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(clock.now_ms(), 1_250);
    }

    #[test]
    fn the_system_clock_is_past_2020() {
        assert!(Clock::System.now_ms() > 1_577_836_800_000);
    }
}
