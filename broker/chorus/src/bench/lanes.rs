//! The load generator every publish figure comes from, Chorus's and NATS's alike: a number of
//! acknowledged publishes run in a window of lanes, each publish's ack latency recorded.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::ensure;
use hdrhistogram::Histogram;
use serde_json::json;

/// Acknowledged publishes per second, and their ack latency.
#[derive(Debug, Clone, Copy)]
pub struct PublishFigures {
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl PublishFigures {
    pub fn megabytes_per_s(&self, size: usize) -> f64 {
        self.rate * size as f64 / 1e6
    }

    pub fn json(&self) -> serde_json::Value {
        json!({ "msg_per_s": self.rate, "ack_p50_ms": self.p50_ms, "ack_p99_ms": self.p99_ms, "ack_p999_ms": self.p999_ms, "ack_max_ms": self.max_ms })
    }
}

/// Runs `total` calls of `send` (one acknowledged publish each) in `window` lanes, and records
/// each one's latency. `send` is told its lane, `0..window`.
pub async fn publish_lanes<F, Fut>(window: usize, total: u64, send: F) -> anyhow::Result<PublishFigures>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let send = Arc::new(send);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut lanes = Vec::new();
    for lane in 0..window.max(1) {
        let (send, next) = (Arc::clone(&send), Arc::clone(&next));
        lanes.push(tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new(3)?;
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let sent = Instant::now();
                send(lane).await?;
                latencies.record(sent.elapsed().as_micros() as u64)?;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Histogram::<u64>::new(3)?;
    for lane in lanes {
        latencies.add(lane.await??)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    ensure!(latencies.len() == total, "{} of {total} publishes acknowledged", latencies.len());
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    let max_ms = latencies.max() as f64 / 1000.0;
    Ok(PublishFigures { rate: total as f64 / elapsed, p50_ms: ms(0.5), p99_ms: ms(0.99), p999_ms: ms(0.999), max_ms })
}
