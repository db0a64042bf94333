//! Frames on QUIC streams.
//!
//! [`FramedSend`] batches: [`FramedSend::queue`] appends encoded frames to a buffer and
//! [`FramedSend::flush`] writes them in one call, which is what lets small messages reach a
//! million per second on one stream. [`FramedRecv`] reads whatever chunks the stream delivers and
//! cuts frames out of them, checking each length before buffering its body.

use bytes::BytesMut;
use quinn::{Connection, RecvStream, SendStream};
use serde::Serialize;
use serde::de::DeserializeOwned;
use verge_proto::{FrameDecoder, encode_frame_into};

use crate::NetError;

/// How many bytes one read asks the stream for.
const READ_CHUNK_BYTES: usize = 256 * 1024;

/// The sending half of a framed stream.
#[derive(Debug)]
pub struct FramedSend {
    stream: SendStream,
    buf: BytesMut,
    frame_bytes_max: usize,
}

impl FramedSend {
    /// Wraps a stream; frames over `frame_bytes_max` are refused.
    pub fn new(stream: SendStream, frame_bytes_max: usize) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            frame_bytes_max,
        }
    }

    /// Encodes `msg` into the send buffer without writing it.
    pub fn queue<T: Serialize>(&mut self, msg: &T) -> Result<(), NetError> {
        encode_frame_into(msg, self.frame_bytes_max, &mut self.buf)?;
        Ok(())
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), NetError> {
        if !self.buf.is_empty() {
            let chunk = self.buf.split().freeze();
            self.stream.write_chunk(chunk).await?;
        }
        Ok(())
    }

    /// Queues and writes one message.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), NetError> {
        self.queue(msg)?;
        self.flush().await
    }

    /// Writes raw bytes as they are, bypassing the codec. Tests and fuzzing use it to send
    /// malformed frames; nothing in a node does.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        self.flush().await?;
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Marks the end of the stream.
    pub fn finish(&mut self) {
        // Finishing an already finished or reset stream is not an error worth reporting.
        let _ = self.stream.finish();
    }
}

/// The receiving half of a framed stream.
#[derive(Debug)]
pub struct FramedRecv {
    stream: RecvStream,
    dec: FrameDecoder,
}

impl FramedRecv {
    /// Wraps a stream; frames over `frame_bytes_max` are an error.
    pub fn new(stream: RecvStream, frame_bytes_max: usize) -> Self {
        Self {
            stream,
            dec: FrameDecoder::new(frame_bytes_max),
        }
    }

    /// The next message; `Ok(None)` when the stream ended cleanly between frames.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, NetError> {
        loop {
            if let Some(msg) = self.dec.next_frame()? {
                return Ok(Some(msg));
            }
            match self.stream.read_chunk(READ_CHUNK_BYTES, true).await? {
                Some(chunk) => self.dec.extend(&chunk.bytes),
                None if self.dec.buffered() == 0 => return Ok(None),
                None => return Err(NetError::Truncated(self.dec.buffered())),
            }
        }
    }

    /// Tells the sender to stop; used after a bad frame.
    pub fn stop(&mut self, code: crate::CloseCode) {
        let _ = self.stream.stop(code.varint());
    }
}

/// Opens a stream, sends one request and reads one response.
pub async fn request<Req: Serialize, Resp: DeserializeOwned>(
    conn: &Connection,
    req: &Req,
    frame_bytes_max: usize,
) -> Result<Resp, NetError> {
    let (send, recv) = conn.open_bi().await?;
    let mut send = FramedSend::new(send, frame_bytes_max);
    send.send(req).await?;
    send.finish();
    let mut recv = FramedRecv::new(recv, frame_bytes_max);
    recv.recv().await?.ok_or(NetError::NoAnswer)
}
