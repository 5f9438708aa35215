//! Framing: a 4-byte big-endian length, then one protobuf message of that many bytes.
//!
//! The decoder checks the claimed length against the limit before anything else and never
//! reserves room for a frame before its bytes have arrived, so a lying prefix costs nothing.
//! "Not enough bytes yet" is `Ok(None)`, not an error; [`FrameCodec::partial`] tells whoever
//! reads with the codec whether such bytes wait, so that it can bound how long a frame takes.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tokio_util::codec::{Decoder, Encoder};

use crate::error::ProtocolError;
use crate::limits::{FRAME_BYTES_MAX_DEFAULT, FRAME_BYTES_MAX_LIMIT, FRAME_PREFIX_BYTES};
use crate::pb;

/// Decodes frames of `In`, encodes frames of `Out`.
pub struct FrameCodec<In, Out> {
    frame_bytes_max: usize,
    partial: PartialFrame,
    _types: PhantomData<fn(Out) -> In>,
}

/// What the decoder tells whoever reads for it: whether it holds the start of a frame it has not
/// seen whole yet (the reader times it), and how many bytes it has taken out of its buffer as
/// whole frames (the reader may count what the buffer holds).
#[derive(Debug, Clone, Default)]
pub struct PartialFrame(std::sync::Arc<DecoderState>);

#[derive(Debug, Default)]
struct DecoderState {
    pending: std::sync::atomic::AtomicBool,
    consumed: std::sync::atomic::AtomicUsize,
}

impl PartialFrame {
    pub fn pending(&self) -> bool {
        self.0.pending.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes taken out of the buffer as frames since the last call.
    pub fn take_consumed(&self) -> usize {
        self.0.consumed.swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    fn set(&self, pending: bool) {
        self.0.pending.store(pending, std::sync::atomic::Ordering::Relaxed);
    }

    fn consumed(&self, bytes: usize) {
        self.0.consumed.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A client's codec: sends client frames, reads server frames.
pub type ClientCodec = FrameCodec<pb::ServerFrame, pb::ClientFrame>;
/// A broker's codec towards clients.
pub type ServerCodec = FrameCodec<pb::ClientFrame, pb::ServerFrame>;
/// The codec between brokers.
pub type PeerCodec = FrameCodec<pb::PeerFrame, pb::PeerFrame>;

impl<In, Out> FrameCodec<In, Out> {
    /// A codec accepting frames up to `frame_bytes_max`, clamped to `FRAME_BYTES_MAX_LIMIT`.
    pub fn new(frame_bytes_max: usize) -> FrameCodec<In, Out> {
        FrameCodec {
            frame_bytes_max: frame_bytes_max.min(FRAME_BYTES_MAX_LIMIT),
            partial: PartialFrame::default(),
            _types: PhantomData,
        }
    }

    /// Follows whether the decoder waits for the rest of a frame.
    pub fn partial(&self) -> PartialFrame {
        self.partial.clone()
    }

    pub fn frame_bytes_max(&self) -> usize {
        self.frame_bytes_max
    }
}

impl<In, Out> Default for FrameCodec<In, Out> {
    fn default() -> Self {
        FrameCodec::new(FRAME_BYTES_MAX_DEFAULT)
    }
}

impl<In, Out> std::fmt::Debug for FrameCodec<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameCodec").field("frame_bytes_max", &self.frame_bytes_max).finish()
    }
}

impl<In: Message + Default, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, ProtocolError> {
        // Bytes left over are the start of the next frame.
        self.partial.set(!src.is_empty());
        let Some(prefix) = src.get(..FRAME_PREFIX_BYTES) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(prefix.try_into().expect("prefix is 4 bytes")) as usize;
        if len > self.frame_bytes_max {
            return Err(ProtocolError::FrameTooLarge { len, max: self.frame_bytes_max });
        }
        if src.len() < FRAME_PREFIX_BYTES + len {
            return Ok(None);
        }
        src.advance(FRAME_PREFIX_BYTES);
        let frame = src.split_to(len).freeze();
        self.partial.set(!src.is_empty());
        self.partial.consumed(FRAME_PREFIX_BYTES + len);
        Ok(Some(In::decode(frame)?))
    }
}

impl<In, Out: Message> Encoder<Out> for FrameCodec<In, Out> {
    type Error = ProtocolError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let len = item.encoded_len();
        if len > self.frame_bytes_max {
            return Err(ProtocolError::FrameTooLarge { len, max: self.frame_bytes_max });
        }
        dst.reserve(FRAME_PREFIX_BYTES + len);
        dst.put_u32(len as u32);
        item.encode(dst).expect("reserved room for the whole frame");
        Ok(())
    }
}

/// A client frame whose body was encoded once ([`encode_request`]): a request sent again, under
/// a new request id, is neither encoded nor cloned again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRequest {
    pub request_id: u64,
    /// A `ClientFrame`'s `body` field, encoded.
    pub body: Bytes,
}

/// Encodes a frame body once, for [`EncodedRequest`]s.
pub fn encode_request(body: &pb::client_frame::Body) -> Bytes {
    let mut bytes = BytesMut::with_capacity(body.encoded_len());
    body.encode(&mut bytes);
    bytes.freeze()
}

/// Writes the same bytes as the `ClientFrame` would: the request id field, then the body's.
impl Encoder<EncodedRequest> for ClientCodec {
    type Error = ProtocolError;

    fn encode(&mut self, item: EncodedRequest, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let id_len = match item.request_id {
            0 => 0,
            id => prost::encoding::uint64::encoded_len(1, &id),
        };
        let len = id_len + item.body.len();
        if len > self.frame_bytes_max {
            return Err(ProtocolError::FrameTooLarge { len, max: self.frame_bytes_max });
        }
        dst.reserve(FRAME_PREFIX_BYTES + len);
        dst.put_u32(len as u32);
        if item.request_id != 0 {
            prost::encoding::uint64::encode(1, &item.request_id, dst);
        }
        dst.put_slice(&item.body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ping(request_id: u64) -> pb::ClientFrame {
        pb::ClientFrame { request_id, body: Some(pb::client_frame::Body::Ping(pb::Ping {})) }
    }

    fn encoded(frames: &[pb::ClientFrame]) -> BytesMut {
        let mut codec = ClientCodec::default();
        let mut bytes = BytesMut::new();
        for frame in frames {
            codec.encode(frame.clone(), &mut bytes).unwrap();
        }
        bytes
    }

    #[test]
    fn a_frame_is_a_big_endian_length_then_the_message() {
        let bytes = encoded(&[ping(7)]);
        let body = ping(7).encode_to_vec();
        assert_eq!(&bytes[..4], &(body.len() as u32).to_be_bytes());
        assert_eq!(&bytes[4..], &body[..]);
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut codec = ServerCodec::default();
        let whole = encoded(&[ping(1), ping(2)]);
        let mut buffer = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in whole {
            buffer.put_u8(byte);
            if let Some(frame) = codec.decode(&mut buffer).unwrap() {
                decoded.push(frame);
            }
        }
        assert_eq!(decoded, vec![ping(1), ping(2)]);
        assert!(buffer.is_empty());
    }

    #[test]
    fn oversized_frames_are_rejected_before_their_bytes_arrive() {
        let mut codec = ServerCodec::new(1024);
        let mut buffer = BytesMut::with_capacity(8);
        buffer.put_u32(1025);
        let capacity = buffer.capacity();
        assert!(matches!(codec.decode(&mut buffer), Err(ProtocolError::FrameTooLarge { len: 1025, max: 1024 })));
        // A frame at the limit is accepted, and still nothing is reserved for it up front.
        let mut buffer = BytesMut::with_capacity(8);
        buffer.put_u32(1024);
        assert!(codec.decode(&mut buffer).unwrap().is_none());
        assert_eq!(buffer.capacity(), capacity);
    }

    #[test]
    fn the_default_limit_is_eight_mebibytes() {
        let mut codec = ServerCodec::default();
        let mut buffer = BytesMut::new();
        buffer.put_u32(FRAME_BYTES_MAX_DEFAULT as u32 + 1);
        assert!(matches!(codec.decode(&mut buffer), Err(ProtocolError::FrameTooLarge { .. })));
        assert_eq!(ServerCodec::new(usize::MAX).frame_bytes_max(), FRAME_BYTES_MAX_LIMIT);
    }

    #[test]
    fn oversized_frames_are_not_sent() {
        let mut codec = ClientCodec::new(16);
        let frame = pb::ClientFrame {
            request_id: 1,
            body: Some(pb::client_frame::Body::Publish(pb::PublishRequest {
                topic: "t".repeat(32),
                ..Default::default()
            })),
        };
        let mut buffer = BytesMut::new();
        assert!(matches!(codec.encode(frame, &mut buffer), Err(ProtocolError::FrameTooLarge { .. })));
        assert!(buffer.is_empty());
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let mut codec = ServerCodec::default();
        let mut buffer = BytesMut::new();
        buffer.put_u32(3);
        buffer.put_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(codec.decode(&mut buffer), Err(ProtocolError::Decode(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16)) {
            let mut server = ServerCodec::new(4096);
            let mut peer = PeerCodec::new(4096);
            let mut client = ClientCodec::new(4096);
            let (mut a, mut b, mut c) = (BytesMut::new(), BytesMut::new(), BytesMut::new());
            for chunk in chunks {
                a.extend_from_slice(&chunk);
                b.extend_from_slice(&chunk);
                c.extend_from_slice(&chunk);
                // Stop at the first error, as a connection would; until then, no panic.
                while let Ok(Some(_)) = server.decode(&mut a) {}
                while let Ok(Some(_)) = peer.decode(&mut b) {}
                while let Ok(Some(_)) = client.decode(&mut c) {}
            }
        }

        #[test]
        fn an_encoded_request_is_the_frame_it_stands_for(request_id in any::<u64>(), topic in "[a-z]{0,12}", payload in prop::collection::vec(any::<u8>(), 0..64)) {
            let body = pb::client_frame::Body::Publish(pb::PublishRequest {
                topic,
                messages: vec![pb::Message { payload: payload.into(), ..Default::default() }],
                ..Default::default()
            });
            let mut codec = ClientCodec::default();
            let (mut framed, mut encoded) = (BytesMut::new(), BytesMut::new());
            codec.encode(pb::ClientFrame { request_id, body: Some(body.clone()) }, &mut framed).unwrap();
            codec.encode(EncodedRequest { request_id, body: encode_request(&body) }, &mut encoded).unwrap();
            prop_assert_eq!(&framed, &encoded);
        }

        #[test]
        fn frames_survive_any_split(ids in prop::collection::vec(any::<u64>(), 1..20), split in any::<prop::sample::Index>()) {
            let frames: Vec<pb::ClientFrame> = ids.iter().map(|&id| ping(id)).collect();
            let whole = encoded(&frames);
            let at = split.index(whole.len() + 1);
            let mut codec = ServerCodec::default();
            let mut buffer = BytesMut::from(&whole[..at]);
            let mut decoded = Vec::new();
            while let Some(frame) = codec.decode(&mut buffer).unwrap() {
                decoded.push(frame);
            }
            buffer.extend_from_slice(&whole[at..]);
            while let Some(frame) = codec.decode(&mut buffer).unwrap() {
                decoded.push(frame);
            }
            prop_assert_eq!(decoded, frames);
        }
    }
}
