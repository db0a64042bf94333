//! The frame codec: `[u32 BE length][u16 BE version][bincode body]`.
//!
//! The length counts the version and the body, so the smallest frame is 6 bytes. The length is
//! checked against `frame_bytes_max` before a single body byte is buffered, so an oversize frame
//! costs its sender nothing but the closed stream. The body is decoded only when the version is
//! one this build speaks, and must be consumed to the last byte: trailing garbage is an error.

use bytes::{Buf, BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The protocol version this build writes and the only one it reads.
pub const PROTOCOL_VERSION: u16 = 1;

/// The default bound on one frame (length prefix excluded): 4 MiB.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 4 * 1024 * 1024;

/// Bytes in front of the body: the length prefix and the version.
pub const FRAME_HEADER_BYTES: usize = 6;

/// The hard ceiling for any configured frame bound (256 MiB); a config above it is refused, and
/// bincode never allocates past it whatever a length field claims.
pub const FRAME_BYTES_CEILING: usize = 256 * 1024 * 1024;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<FRAME_BYTES_CEILING>,
>;

const fn config() -> Config {
    bincode::config::standard().with_limit::<FRAME_BYTES_CEILING>()
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The frame's announced length exceeds the configured bound.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversize {
        /// The announced (or, when encoding, actual) length.
        len: usize,
        /// The configured bound.
        max: usize,
    },
    /// The frame's length is too small to hold a version.
    #[error("frame of {len} bytes is too short to hold a version")]
    TooShort {
        /// The announced length.
        len: usize,
    },
    /// The frame was written by a protocol version this build does not speak.
    #[error("frame has protocol version {got}, this node speaks version {PROTOCOL_VERSION}")]
    UnsupportedVersion {
        /// The version on the wire.
        got: u16,
    },
    /// The body is not a valid message.
    #[error("frame body does not decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// The body decoded but left bytes unread.
    #[error("frame body has {0} trailing bytes after the message")]
    Trailing(usize),
    /// The message could not be encoded (a bug on this side, never the peer's).
    #[error("message does not encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
}

impl CodecError {
    /// A short, stable label for metrics (`oversize`, `version`, `decode`).
    pub fn kind(&self) -> &'static str {
        match self {
            CodecError::Oversize { .. } => "oversize",
            CodecError::TooShort { .. } => "short",
            CodecError::UnsupportedVersion { .. } => "version",
            CodecError::Decode(_) | CodecError::Trailing(_) => "decode",
            CodecError::Encode(_) => "encode",
        }
    }
}

/// Appends one frame holding `msg` to `out`.
pub fn encode_frame_into<T: Serialize>(
    msg: &T,
    frame_bytes_max: usize,
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    let start = out.len();
    out.put_u32(0);
    out.put_u16(PROTOCOL_VERSION);
    let mut writer = out.writer();
    let written = bincode::serde::encode_into_std_write(msg, &mut writer, config());
    let out = writer.into_inner();
    if let Err(e) = written {
        out.truncate(start);
        return Err(e.into());
    }
    let len = out.len() - start - 4;
    if len > frame_bytes_max {
        out.truncate(start);
        return Err(CodecError::Oversize {
            len,
            max: frame_bytes_max,
        });
    }
    // `len` fits: it is at most `frame_bytes_max`, itself at most FRAME_BYTES_CEILING.
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Encodes `msg` as one frame.
pub fn encode_frame<T: Serialize>(msg: &T, frame_bytes_max: usize) -> Result<BytesMut, CodecError> {
    let mut out = BytesMut::new();
    encode_frame_into(msg, frame_bytes_max, &mut out)?;
    Ok(out)
}

/// Encodes `msg` as a bare body (no length, no version): for values that are stored or hashed
/// rather than sent, such as a model bundle. [`decode_body`] reads it back.
pub fn encode_body<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(msg, config())?)
}

/// Decodes a frame body (the bytes after the version) into a message.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    let (msg, used) = bincode::serde::decode_from_slice(body, config())?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(msg)
}

/// Splits a byte stream into frames.
///
/// Feed it whatever the transport delivers with [`FrameDecoder::extend`], then take frames with
/// [`FrameDecoder::next_frame`] until it returns `Ok(None)`. After an error the stream is out of
/// step and must be closed.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    frame_bytes_max: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `frame_bytes_max`.
    pub fn new(frame_bytes_max: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(8 * 1024),
            frame_bytes_max,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that do not yet form a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame's message, `Ok(None)` if more bytes are needed.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, CodecError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.frame_bytes_max {
            return Err(CodecError::Oversize {
                len,
                max: self.frame_bytes_max,
            });
        }
        if len < 2 {
            return Err(CodecError::TooShort { len });
        }
        if self.buf.len() < 4 + len {
            // Reserve once for the whole frame rather than growing by doubling.
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        let frame = self.buf.split_to(len);
        let version = u16::from_be_bytes([frame[0], frame[1]]);
        if version != PROTOCOL_VERSION {
            return Err(CodecError::UnsupportedVersion { got: version });
        }
        decode_body(&frame[2..]).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;
    use crate::peer::PeerMessage;
    use proptest::prelude::*;

    fn frames_of(msgs: &[PeerMessage]) -> BytesMut {
        let mut out = BytesMut::new();
        for m in msgs {
            encode_frame_into(m, FRAME_BYTES_MAX_DEFAULT, &mut out).expect("encodes");
        }
        out
    }

    #[test]
    fn round_trips_across_arbitrary_splits() {
        let msgs = vec![
            PeerMessage::Ping { seq: 1, sent_us: 7 },
            PeerMessage::Pong { seq: 1, echo_us: 7 },
            PeerMessage::Blob {
                seq: 9,
                payload: vec![1u8; 10_000].into(),
            },
        ];
        let bytes = frames_of(&msgs);
        for chunk in [1, 3, 7, 64, 100_000] {
            let mut dec = FrameDecoder::new(FRAME_BYTES_MAX_DEFAULT);
            let mut got = Vec::new();
            for piece in bytes.chunks(chunk) {
                dec.extend(piece);
                while let Some(m) = dec.next_frame::<PeerMessage>().expect("decodes") {
                    got.push(m);
                }
            }
            assert_eq!(got, msgs, "chunk size {chunk}");
            assert_eq!(dec.buffered(), 0);
        }
    }

    #[test]
    fn refuses_oversize_before_buffering_the_body() {
        let mut dec = FrameDecoder::new(1024);
        dec.extend(&(1_000_000u32).to_be_bytes());
        let err = dec.next_frame::<PeerMessage>().expect_err("oversize");
        assert!(matches!(
            err,
            CodecError::Oversize {
                len: 1_000_000,
                max: 1024
            }
        ));
        assert_eq!(err.kind(), "oversize");
    }

    #[test]
    fn refuses_to_encode_oversize() {
        let big = PeerMessage::Blob {
            seq: 0,
            payload: vec![0u8; 2048].into(),
        };
        assert!(matches!(
            encode_frame(&big, 1024),
            Err(CodecError::Oversize { max: 1024, .. })
        ));
    }

    #[test]
    fn refuses_unknown_version_and_trailing_bytes() {
        let mut frame = encode_frame(&PeerMessage::Ping { seq: 1, sent_us: 2 }, 1024).expect("ok");
        frame[5] = 99;
        let mut dec = FrameDecoder::new(1024);
        dec.extend(&frame);
        assert!(matches!(
            dec.next_frame::<PeerMessage>(),
            Err(CodecError::UnsupportedVersion { got: 99 })
        ));

        let mut frame = encode_frame(&PeerMessage::Ping { seq: 1, sent_us: 2 }, 1024).expect("ok");
        frame.extend_from_slice(&[0, 0]);
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        let mut dec = FrameDecoder::new(1024);
        dec.extend(&frame);
        assert!(matches!(
            dec.next_frame::<PeerMessage>(),
            Err(CodecError::Trailing(2))
        ));
    }

    #[test]
    fn node_id_is_validated_on_decode() {
        // A member view whose id is not a DNS label must not decode into a NodeId.
        let bad = encode_frame(&"Not A Label".to_owned(), 1024).expect("ok");
        let mut dec = FrameDecoder::new(1024);
        dec.extend(&bad);
        assert!(matches!(
            dec.next_frame::<NodeId>(),
            Err(CodecError::Decode(_))
        ));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut dec = FrameDecoder::new(2048);
            dec.extend(&bytes);
            // Decode until the decoder wants more bytes or reports the stream broken.
            while let Ok(Some(_)) = dec.next_frame::<PeerMessage>() {}
        }

        #[test]
        fn pings_round_trip(seq in any::<u64>(), sent_us in any::<u64>()) {
            let m = PeerMessage::Ping { seq, sent_us };
            let mut dec = FrameDecoder::new(1024);
            dec.extend(&encode_frame(&m, 1024).expect("encodes"));
            prop_assert_eq!(dec.next_frame::<PeerMessage>().expect("decodes"), Some(m));
        }
    }
}
