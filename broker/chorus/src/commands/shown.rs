//! How messages print, losing nothing.
//!
//! - **Text**, one line per message: `SEQ<TAB>PAYLOAD`, then `<TAB>key=KEY` if it has one and
//!   `<TAB>NAME=VALUE` per header. Bytes that would break the line or are not UTF-8 are escaped
//!   (`\n`, `\r`, `\t`, `\\`, `\xNN`), so a line is always one message.
//! - **JSON**, one object per line. A payload, key or header value that is UTF-8 is a string
//!   (`payload`, `key`, `value`); one that is not is base64 under the same name plus `_base64`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chorus_consumers::Delivered;
use chorus_protocol::pb;
use serde_json::{Map, Value, json};

/// A message as one text line (without its newline).
pub fn message_line(message: &Delivered) -> String {
    format!("{}\t{}", message.seq, content_line(message))
}

/// A stored message's content as [`message_line`] gives it, without the sequence in front.
pub fn stored_line(message: &pb::StoredMessage) -> String {
    content_line(&Delivered::from(message.clone()))
}

/// A stored message as [`message_json`] gives it, without the topic.
pub fn stored_json(message: pb::StoredMessage) -> Value {
    let mut json = message_json("", &Delivered::from(message));
    json.as_object_mut().expect("an object").remove("topic");
    json
}

/// Payload, key and headers, tab-separated, escaped.
fn content_line(message: &Delivered) -> String {
    let mut line = escaped(&message.payload);
    if let Some(key) = &message.key {
        line.push_str(&format!("\tkey={}", escaped(key)));
    }
    for (name, value) in &message.headers {
        line.push_str(&format!("\t{}={}", escaped(name.as_bytes()), escaped(value)));
    }
    line
}

/// A message as a JSON object.
pub fn message_json(topic: &str, message: &Delivered) -> Value {
    let mut object = json!({
        "topic": topic,
        "seq": message.seq,
        "log_index": message.log_index,
        "batch_pos": message.batch_pos,
        "time_ms": message.time_ms,
    });
    let fields = object.as_object_mut().expect("an object");
    if let Some(key) = &message.key {
        put_bytes(fields, "key", key);
    }
    let headers: Vec<Value> = message
        .headers
        .iter()
        .map(|(name, value)| {
            let mut header = Map::new();
            header.insert("name".into(), json!(name));
            put_bytes(&mut header, "value", value);
            Value::Object(header)
        })
        .collect();
    fields.insert("headers".into(), Value::Array(headers));
    put_bytes(fields, "payload", &message.payload);
    object
}

/// `bytes` under `name` as a string if UTF-8, else as base64 under `name_base64`.
fn put_bytes(fields: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => fields.insert(name.into(), json!(text)),
        Err(_) => fields.insert(format!("{name}_base64"), json!(BASE64.encode(bytes))),
    };
}

/// `bytes` as text that holds no tab or line break: UTF-8 as is, except `\` `\t` `\n` `\r` and
/// other control characters escaped; other bytes as `\xNN`.
pub fn escaped(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => text.push_str("\\\\"),
                '\t' => text.push_str("\\t"),
                '\n' => text.push_str("\\n"),
                '\r' => text.push_str("\\r"),
                c if c.is_control() => text.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => text.push(c),
            }
        }
        for byte in chunk.invalid() {
            text.push_str(&format!("\\x{byte:02x}"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;

    fn delivered(payload: &[u8], key: Option<&[u8]>, headers: &[(&str, &[u8])]) -> Delivered {
        Delivered {
            seq: 7,
            log_index: 40,
            batch_pos: 2,
            time_ms: 1_000,
            key: key.map(Bytes::copy_from_slice),
            headers: headers.iter().map(|(n, v)| ((*n).to_owned(), Bytes::copy_from_slice(v))).collect(),
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn a_line_keeps_the_key_and_headers_and_stays_one_line() {
        let message = delivered(b"two\nlines\tand \\", Some(b"k1"), &[("trace", b"abc")]);
        assert_eq!(message_line(&message), "7\ttwo\\nlines\\tand \\\\\tkey=k1\ttrace=abc");
        assert_eq!(escaped(&[0xff, b'a', 0x01]), "\\xffa\\u{1}");
    }

    #[test]
    fn json_carries_binary_as_base64() {
        let message = delivered(&[0, 159, 146, 150], Some(b"k"), &[("h", &[0xff])]);
        let json = message_json("t", &message);
        assert_eq!(json["payload_base64"], "AJ+Slg==");
        assert!(json.get("payload").is_none());
        assert_eq!(json["key"], "k");
        assert_eq!(json["headers"][0]["name"], "h");
        assert_eq!(json["headers"][0]["value_base64"], "/w==");
        assert_eq!(message_json("t", &delivered(b"hi", None, &[]))["payload"], "hi");
    }

    proptest! {
        /// Whatever the bytes, the text is one line that splits on tabs into the same fields, and
        /// JSON gives the bytes back.
        #[test]
        fn nothing_is_lost(payload in proptest::collection::vec(any::<u8>(), 0..64),
                           key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16))) {
            let message = delivered(&payload, key.as_deref(), &[]);
            let line = message_line(&message);
            prop_assert!(!line.contains('\n') && !line.contains('\r'));
            prop_assert_eq!(line.split('\t').count(), 2 + usize::from(key.is_some()));
            let json = message_json("t", &message);
            let back = match (json.get("payload"), json.get("payload_base64")) {
                (Some(text), None) => text.as_str().unwrap().as_bytes().to_vec(),
                (None, Some(b64)) => BASE64.decode(b64.as_str().unwrap()).unwrap(),
                other => panic!("{other:?}"),
            };
            prop_assert_eq!(back, payload);
        }
    }
}
