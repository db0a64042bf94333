//! Verge's wire vocabulary: node identities, the messages nodes and the admin CLI exchange, and the
//! frame codec that carries them.
//!
//! This crate owns every type that crosses a socket and nothing that performs IO. A frame on the wire
//! is a 4-byte big-endian length (of what follows), a 2-byte big-endian protocol version, and a
//! bincode (`=2.0.1`, serde) body. Frames are bounded by a configured maximum (`frame_bytes_max`);
//! a frame that is oversize, of an unknown version, or that does not decode is an error the caller
//! can count and survive, never a panic.

pub mod admin;
pub mod codec;
pub mod id;
pub mod model;
pub mod peer;
pub mod replication;
pub mod stream;

pub use codec::{
    CodecError, FRAME_BYTES_MAX_DEFAULT, FRAME_HEADER_BYTES, FrameDecoder, PROTOCOL_VERSION,
    decode_body, encode_body, encode_frame, encode_frame_into,
};
pub use id::{IdError, NodeId};
pub use stream::{Record, StreamId, StreamIdError, StreamKind};
