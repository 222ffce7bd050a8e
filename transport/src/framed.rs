//! One framed stream over a QUIC stream pair, in the engine's frame codec
//! (`tidings_engine::wire`: a big-endian `u32` length, then the postcard body).

use tidings_engine::wire::{self, Frame, WireError, FRAME_HEADER_LEN};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The bytes are not an acceptable frame: over the size limit (refused from the length
    /// prefix, before anything is allocated), or a body that does not decode.
    #[error("bad frame: {0}")]
    Wire(#[from] WireError),
    /// The stream ended inside a frame.
    #[error("the stream ended inside a frame ({missing} bytes missing)")]
    Truncated {
        /// Bytes of the frame that never came.
        missing: usize,
    },
    /// Reading failed (the connection is gone or the peer reset the stream).
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
}

/// Reads length-prefixed frames of at most a set length from a QUIC receive stream.
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
    max_len: usize,
}

impl FrameReader {
    /// Reads frames of at most `max_len` body bytes (and never more than
    /// [`wire::MAX_FRAME_LEN`]).
    pub fn new(recv: quinn::RecvStream, max_len: usize) -> FrameReader {
        FrameReader {
            recv,
            max_len: max_len.min(wire::MAX_FRAME_LEN),
        }
    }

    /// Changes the size limit for the frames read from now on (at most
    /// [`wire::MAX_FRAME_LEN`]).
    pub fn set_max_len(&mut self, max_len: usize) {
        self.max_len = max_len.min(wire::MAX_FRAME_LEN);
    }

    /// The body of the next frame, undecoded (for a reader that decodes depending on state,
    /// like a server before authentication); `None` once the stream ended between frames.
    pub async fn read_body(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let mut header = [0u8; FRAME_HEADER_LEN];
        match self.recv.read_exact(&mut header).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
            Err(quinn::ReadExactError::FinishedEarly(n)) => {
                return Err(FrameError::Truncated {
                    missing: FRAME_HEADER_LEN - n,
                })
            }
            Err(quinn::ReadExactError::ReadError(e)) => return Err(e.into()),
        }
        let len = wire::decode_len(header, self.max_len)?;
        let mut body = vec![0u8; len];
        match self.recv.read_exact(&mut body).await {
            Ok(()) => Ok(Some(body)),
            Err(quinn::ReadExactError::FinishedEarly(n)) => {
                Err(FrameError::Truncated { missing: len - n })
            }
            Err(quinn::ReadExactError::ReadError(e)) => Err(e.into()),
        }
    }

    /// The next frame, decoded and checked against its field limits; `None` once the stream
    /// ended between frames.
    pub async fn read_frame<F: Frame>(&mut self) -> Result<Option<F>, FrameError> {
        match self.read_body().await? {
            Some(body) => Ok(Some(wire::decode_body(&body)?)),
            None => Ok(None),
        }
    }

    /// The stream underneath.
    pub fn get_mut(&mut self) -> &mut quinn::RecvStream {
        &mut self.recv
    }
}

/// Writes length-prefixed frames to a QUIC send stream; frames queued together go out in one
/// write.
#[derive(Debug)]
pub struct FrameWriter {
    send: quinn::SendStream,
    buf: Vec<u8>,
}

impl FrameWriter {
    /// A writer on `send`.
    pub fn new(send: quinn::SendStream) -> FrameWriter {
        FrameWriter {
            send,
            buf: Vec::new(),
        }
    }

    /// Encodes `frame` after those already queued; nothing is written until
    /// [`FrameWriter::flush`]. A frame that does not encode is not queued.
    pub fn queue<F: Frame>(&mut self, frame: &F) -> Result<(), WireError> {
        wire::encode_frame(frame, &mut self.buf)
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        if !self.buf.is_empty() {
            let result = self.send.write_all(&self.buf).await;
            self.buf.clear();
            result?;
        }
        Ok(())
    }

    /// Writes one frame (after anything queued).
    pub async fn write_frame<F: Frame>(&mut self, frame: &F) -> Result<(), FrameError> {
        if let Err(e) = self.queue(frame) {
            // What was queued before still goes out; the bad frame does not.
            self.flush().await?;
            return Err(e.into());
        }
        self.flush().await
    }

    /// Writes bytes as they are (after anything queued): for tests of malformed input.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.flush().await?;
        self.send.write_all(bytes).await?;
        Ok(())
    }

    /// The stream underneath.
    pub fn get_mut(&mut self) -> &mut quinn::SendStream {
        &mut self.send
    }
}
