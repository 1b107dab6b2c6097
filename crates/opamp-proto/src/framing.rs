//! OpAMP-over-WebSocket framing: every binary message is a varint header (only value 0 is
//! defined) followed by the protobuf. Pure byte handling; the transport owns the socket.

use bytes::{BufMut, Bytes, BytesMut};

/// Why a WebSocket binary message is not an OpAMP frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unsupported websocket message header {0}")]
    UnsupportedHeader(u8),
}

/// Returns the protobuf payload of a WebSocket binary message.
///
/// First byte 0 is the header and is stripped. Bytes 1..=7 would be a protobuf tag with field
/// number 0, which no protobuf has, so they can only be a non-zero header: malformed. Any other
/// first byte is a bare protobuf from a legacy peer that sends no header.
pub fn decode(message: Bytes) -> Result<Bytes, FrameError> {
    match message.first() {
        None => Ok(message),
        Some(0) => Ok(message.slice(1..)),
        Some(&b @ 1..=7) => Err(FrameError::UnsupportedHeader(b)),
        Some(_) => Ok(message),
    }
}

/// Frames an encoded protobuf for a WebSocket binary message: header 0x00, then the payload.
pub fn encode(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 1);
    out.put_u8(0);
    out.put_slice(payload);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_zero_is_stripped() {
        assert_eq!(decode(Bytes::from_static(&[0, 10, 1, 2])), Ok(Bytes::from_static(&[10, 1, 2])));
        assert_eq!(decode(Bytes::from_static(&[0])), Ok(Bytes::new()));
    }

    #[test]
    fn bare_protobuf_from_legacy_peer_is_accepted() {
        assert_eq!(decode(Bytes::from_static(&[10, 1, 2])), Ok(Bytes::from_static(&[10, 1, 2])));
    }

    #[test]
    fn empty_message_is_an_empty_payload() {
        assert_eq!(decode(Bytes::new()), Ok(Bytes::new()));
    }

    #[test]
    fn nonzero_header_is_malformed() {
        assert_eq!(decode(Bytes::from_static(&[1, 10])), Err(FrameError::UnsupportedHeader(1)));
        assert_eq!(decode(Bytes::from_static(&[7])), Err(FrameError::UnsupportedHeader(7)));
    }

    #[test]
    fn encode_prepends_zero_header() {
        assert_eq!(&encode(&[8, 1])[..], &[0, 8, 1]);
    }
}
