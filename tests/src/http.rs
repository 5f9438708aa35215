//! A plain HTTP/1.0 GET for the tests that read a broker's `/metrics`, `/healthz` and `/readyz`,
//! and Prometheus's query API: one request per connection, the whole answer read.

use std::io::{Read, Write};
use std::time::Duration;

/// An answer: its status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// `GET path` from `addr`, or `None` when nothing answers within a second or the answer is not HTTP.
pub fn get(addr: &str, path: &str) -> Option<Answer> {
    let timeout = Duration::from_secs(1);
    let socket = addr.parse().ok()?;
    let mut stream = std::net::TcpStream::connect_timeout(&socket, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(Answer { status, body: body.to_owned() })
}

/// The value of the sample `series` (a metric name with its labels, as the text format writes
/// them) in a `/metrics` body.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `text` with every byte but unreserved ones percent-encoded, for a query string.
pub fn url_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_their_whole_series() {
        let metrics = "# TYPE x counter\nchorus_x_total 3\nchorus_x_total_more 4\nchorus_y{a=\"1\"} 2.5\n";
        assert_eq!(sample(metrics, "chorus_x_total"), Some(3.0));
        assert_eq!(sample(metrics, "chorus_y{a=\"1\"}"), Some(2.5));
        assert_eq!(sample(metrics, "chorus_y"), None);
    }

    #[test]
    fn queries_are_encoded() {
        assert_eq!(url_encoded("up{job=\"a\"} > 0"), "up%7Bjob%3D%22a%22%7D%20%3E%200");
    }
}
