//! [`FrameCodec`]: a thin tokio-util `Decoder`/`Encoder` over the sans-IO functions of [`crate::frame`].
//!
//! The codec adds nothing but a configurable frame limit, so everything about the format is tested once, in
//! `frame`. Use it as `Framed<TcpStream, FrameCodec>`.
//! To send a prost message without building an intermediate [`Frame`], encode it with
//! [`crate::frame::encode_message`] straight into `Framed::write_buffer_mut()` and flush.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::error::ProtocolError;
use crate::frame::{FRAME_HEADER_BYTES, Frame};
use crate::limits::FRAME_BYTES_MAX;

#[cfg(test)]
mod tests;

/// Decodes and encodes [`Frame`]s, rejecting any frame larger than its limit in either direction.
///
/// A decode error means framing is lost: send an error frame and close the connection.
/// The decoder never reserves buffer space for a frame that has not arrived, so a peer that announces a large
/// frame and stalls costs only the bytes it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCodec {
    frame_bytes_max: u32,
}

impl FrameCodec {
    /// A codec with the protocol's limit, [`FRAME_BYTES_MAX`].
    pub const fn new() -> FrameCodec {
        FrameCodec { frame_bytes_max: FRAME_BYTES_MAX }
    }

    /// A codec that accepts and sends frames of at most `frame_bytes_max` bytes after the length prefix.
    ///
    /// The value is clamped to `FRAME_HEADER_BYTES..=FRAME_BYTES_MAX`: a broker may lower the protocol's limit,
    /// never raise it, and a limit below the header size would reject every frame.
    pub const fn with_max_frame_bytes(frame_bytes_max: u32) -> FrameCodec {
        let frame_bytes_max = if frame_bytes_max > FRAME_BYTES_MAX {
            FRAME_BYTES_MAX
        } else if frame_bytes_max < FRAME_HEADER_BYTES {
            FRAME_HEADER_BYTES
        } else {
            frame_bytes_max
        };
        FrameCodec { frame_bytes_max }
    }

    /// The limit in force, in bytes after the length prefix.
    pub const fn max_frame_bytes(&self) -> u32 {
        self.frame_bytes_max
    }
}

impl Default for FrameCodec {
    fn default() -> FrameCodec {
        FrameCodec::new()
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        Frame::decode_with_max(src, self.frame_bytes_max)
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        frame.encode_with_max(dst, self.frame_bytes_max)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        frame.encode_with_max(dst, self.frame_bytes_max)
    }
}
