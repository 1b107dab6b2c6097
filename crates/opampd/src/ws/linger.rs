//! The end of a WebSocket session we close: after our close frame, whatever the client still
//! sends is read and thrown away until its own close frame arrives (or a short, bounded linger
//! runs out). Dropping a connection with unread data makes the kernel reset it, and the client
//! then loses the close frame we just sent, and the code in it (1009 "message too large" arrived
//! as 1006 "abnormal closure" in two runs out of three with a 2 MiB frame against a 1 MiB limit).
//!
//! tungstenite cannot skip a frame it refused as too large: it stops at the frame's header and
//! keeps no position. So [`Tapped`] follows the client's frame boundaries in every byte read from
//! the socket (headers only, keeping no payload), and [`linger`] carries on from there on the raw
//! stream. Must not buffer what it skips: one small read buffer, whatever the client sends.
//!
//! The same tracking tells the session when tungstenite holds nothing (no partial frame, no
//! unfinished fragmented message, no unsent bytes): only then may an idle session drop
//! tungstenite's buffers and keep the bare stream ([`Tapped::quiet`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The close opcode (RFC 6455 section 5.5.1); control opcodes are 0x8 and above.
const OP_CLOSE: u8 = 0x8;
/// The FIN bit of a frame's first byte: the last frame of a message.
const FIN: u8 = 0x80;
/// The longest frame header: 2 bytes, a 64-bit length, a 4-byte mask.
const MAX_HEADER: usize = 14;
/// The read buffer of the linger, allocated only while lingering.
const CHUNK: usize = 8 * 1024;

/// Where the client's frames begin and end, learnt from the bytes read so far.
#[derive(Debug, Default)]
struct Frames {
    /// The header of the next frame, as far as it has arrived.
    header: [u8; MAX_HEADER],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// The current frame is a close frame.
    in_close: bool,
    /// The current frame is a data frame (not a control frame) and ends its message.
    data_fin: Option<bool>,
    /// A fragmented message has begun and its last frame has not been read.
    in_fragment: bool,
    /// A whole close frame has been read: the client sends nothing after it.
    peer_closed: bool,
}

impl Frames {
    fn feed(&mut self, mut bytes: &[u8]) {
        while let Some((&first, rest)) = bytes.split_first() {
            if self.payload_left > 0 {
                let n =
                    usize::try_from(self.payload_left).map_or(bytes.len(), |l| l.min(bytes.len()));
                self.payload_left -= n as u64;
                bytes = &bytes[n..];
                if self.payload_left == 0 {
                    self.frame_done();
                }
                continue;
            }
            self.header[self.header_len] = first;
            self.header_len += 1;
            bytes = rest;
            if let Some((opcode, len)) = parse_header(&self.header[..self.header_len]) {
                self.header_len = 0;
                self.in_close = opcode == OP_CLOSE;
                self.data_fin = (opcode < OP_CLOSE).then_some(self.header[0] & FIN != 0);
                self.payload_left = len;
                if len == 0 {
                    self.frame_done();
                }
            }
        }
    }

    fn frame_done(&mut self) {
        if self.in_close {
            self.peer_closed = true;
        }
        if let Some(fin) = self.data_fin {
            self.in_fragment = !fin;
        }
    }

    /// Every byte read so far belongs to whole frames, and no message is half read.
    fn at_rest(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0 && !self.in_fragment
    }
}

/// `(opcode, payload length)` once `h` holds a whole frame header, `None` while it is short.
/// Never asks for more than [`MAX_HEADER`] bytes.
fn parse_header(h: &[u8]) -> Option<(u8, u64)> {
    let (&b0, rest) = h.split_first()?;
    let (&b1, rest) = rest.split_first()?;
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    let (len, rest) = match b1 & 0x7f {
        126 => {
            let (ext, rest) = rest.split_first_chunk::<2>()?;
            (u64::from(u16::from_be_bytes(*ext)), rest)
        }
        127 => {
            let (ext, rest) = rest.split_first_chunk::<8>()?;
            (u64::from_be_bytes(*ext), rest)
        }
        short => (u64::from(short), rest),
    };
    (rest.len() >= mask).then_some((b0 & 0x0f, len))
}

/// The upgraded connection under tungstenite, following the client's frames as they are read.
#[derive(Debug)]
pub(super) struct Tapped<S> {
    inner: S,
    frames: Frames,
    /// The last write or flush could not complete: the writer holds unsent bytes.
    write_pending: bool,
}

impl<S> Tapped<S> {
    pub(super) fn new(inner: S) -> Self {
        Self { inner, frames: Frames::default(), write_pending: false }
    }

    /// True when whoever reads and writes through this stream holds no data of it: every byte
    /// read belongs to whole frames, no fragmented message is half read, and the last write
    /// completed. A reader that also has no complete frame left to hand out (tungstenite once
    /// its read returned pending) then holds nothing but empty buffers.
    pub(super) fn quiet(&self) -> bool {
        self.frames.at_rest() && !self.write_pending
    }

    /// True once the client's close frame has been read in full (by tungstenite or the linger).
    pub(super) fn peer_closed(&self) -> bool {
        self.frames.peer_closed
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tapped<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.frames.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tapped<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.write_pending = polled.is_pending();
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.write_pending = polled.is_pending();
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.write_pending = polled.is_pending();
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// How a linger ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lingered {
    /// The client's close frame was read: the connection can go without a reset.
    PeerClosed,
    /// The client hung up.
    Eof,
    /// Reading failed (the client reset the connection).
    Broken,
    /// The byte bound was reached first.
    TooMuch,
    /// The time bound was reached first.
    TimedOut,
}

/// Reads and discards what the client sends after our close frame, until its close frame has
/// been read, it hangs up, or `time` or `max_bytes` run out.
pub(super) async fn linger<S: AsyncRead + Unpin>(
    io: &mut Tapped<S>,
    time: Duration,
    max_bytes: u64,
) -> Lingered {
    if io.peer_closed() {
        return Lingered::PeerClosed;
    }
    // on the heap, and only now: in the session's future it would cost every idle session
    let mut chunk = vec![0u8; CHUNK];
    let mut skipped: u64 = 0;
    let drain = async {
        while !io.peer_closed() {
            if skipped >= max_bytes {
                return Lingered::TooMuch;
            }
            match io.read(&mut chunk).await {
                Ok(0) => return Lingered::Eof,
                Ok(n) => skipped += n as u64,
                Err(_) => return Lingered::Broken,
            }
        }
        Lingered::PeerClosed
    };
    let end = tokio::time::timeout(time, drain).await.unwrap_or(Lingered::TimedOut);
    tracing::debug!(end = ?end, skipped, "websocket close linger over");
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame with `opcode` and a payload of `len` bytes.
    fn frame(opcode: u8, len: usize) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match len {
            0..=125 => f.push(0x80 | len as u8),
            126..=0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(std::iter::repeat_n(0xaa, len));
        f
    }

    #[test]
    fn the_close_frame_is_found_behind_frames_of_every_length_class_in_any_chunking() {
        let mut stream = Vec::new();
        for (opcode, len) in [(0x2, 0), (0x2, 125), (0x2, 126), (0x9, 3), (0x2, 70_000)] {
            stream.extend(frame(opcode, len));
        }
        let close_at = stream.len();
        stream.extend(frame(OP_CLOSE, 2));
        for chunk in [1, 2, 3, 7, 13, 14, 4096, stream.len()] {
            let mut frames = Frames::default();
            let mut seen = 0;
            for piece in stream.chunks(chunk) {
                assert!(!frames.peer_closed, "chunk {chunk}: close seen early at {seen}");
                frames.feed(piece);
                seen += piece.len();
            }
            assert!(seen > close_at && frames.peer_closed, "chunk {chunk}");
        }
    }

    #[test]
    fn a_close_frame_counts_only_once_its_payload_is_read() {
        let close = frame(OP_CLOSE, 20);
        let mut frames = Frames::default();
        frames.feed(&close[..close.len() - 1]);
        assert!(!frames.peer_closed);
        frames.feed(&close[close.len() - 1..]);
        assert!(frames.peer_closed);
        // an empty close frame is whole with its header
        let mut frames = Frames::default();
        frames.feed(&frame(OP_CLOSE, 0));
        assert!(frames.peer_closed);
    }

    /// A masked client frame with `opcode` and a payload of `len` bytes, FIN set or not.
    fn fragment(opcode: u8, len: usize, fin: bool) -> Vec<u8> {
        let mut f = frame(opcode, len);
        if !fin {
            f[0] &= !FIN;
        }
        f
    }

    #[test]
    fn at_rest_only_between_whole_messages() {
        let mut frames = Frames::default();
        assert!(frames.at_rest(), "nothing read yet");
        let whole = frame(0x2, 300);
        frames.feed(&whole[..1]);
        assert!(!frames.at_rest(), "half a header");
        frames.feed(&whole[1..10]);
        assert!(!frames.at_rest(), "header read, payload to come");
        frames.feed(&whole[10..]);
        assert!(frames.at_rest(), "one whole message");

        // a fragmented message, with a ping between its frames
        frames.feed(&fragment(0x2, 10, false));
        assert!(!frames.at_rest(), "first fragment only");
        frames.feed(&frame(0x9, 0));
        assert!(!frames.at_rest(), "a control frame does not end the message");
        frames.feed(&fragment(0x0, 0, false));
        assert!(!frames.at_rest(), "an empty middle fragment");
        frames.feed(&fragment(0x0, 5, true));
        assert!(frames.at_rest(), "the last fragment ends it");
        frames.feed(&frame(0xA, 4));
        assert!(frames.at_rest(), "a whole pong");
    }

    #[test]
    fn a_huge_announced_length_is_only_counted_never_buffered() {
        let mut frames = Frames::default();
        let mut head = vec![0x82, 0xff];
        head.extend_from_slice(&u64::MAX.to_be_bytes());
        head.extend_from_slice(&[1, 2, 3, 4]);
        frames.feed(&head);
        frames.feed(&[0; 1000]);
        assert_eq!(frames.payload_left, u64::MAX - 1000);
        assert!(!frames.peer_closed);
    }

    #[test]
    fn headers_parse_only_when_whole() {
        assert_eq!(parse_header(&[]), None);
        assert_eq!(parse_header(&[0x88]), None);
        assert_eq!(parse_header(&[0x88, 0x00]), Some((0x8, 0)), "unmasked, no length bytes");
        assert_eq!(parse_header(&[0x88, 0x82, 1, 2, 3]), None, "mask incomplete");
        assert_eq!(parse_header(&[0x88, 0x82, 1, 2, 3, 4]), Some((0x8, 2)));
        assert_eq!(parse_header(&[0x82, 0xfe, 0x01]), None);
        assert_eq!(parse_header(&[0x82, 0x7e, 0x01, 0x00]), Some((0x2, 256)));
    }
}
