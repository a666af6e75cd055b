//! The codec: length-prefixed postcard frames (one canonical encoding per value), the
//! chunk header, and the incremental [`FrameDecoder`].

use super::*;

/// Encodes a frame: `u32` big-endian length, then the postcard encoding.
pub fn encode_frame<T: Serialize>(frame: &T) -> Bytes {
    let body = postcard::to_allocvec(frame).expect("frames always serialise");
    let mut out = BytesMut::with_capacity(4 + body.len());
    out.put_u32(u32::try_from(body.len()).expect("frames are far below 4 GiB"));
    out.extend_from_slice(&body);
    out.freeze()
}

/// Decodes one postcard value that must fill `bytes` exactly, in its one canonical
/// encoding: trailing bytes, and encodings postcard would not have written (over-long
/// varints, say), are refused, so every accepted frame has exactly one byte form.
pub fn decode_exact<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    let (value, rest): (T, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ProtocolError::Malformed(format!(
            "{} trailing bytes after the frame",
            rest.len()
        )));
    }
    // Re-encode without allocating, comparing byte by byte with what arrived.
    let canonical = postcard::serialize_with_flavor(&value, SameBytes { expected: bytes })
        .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if !canonical {
        return Err(ProtocolError::Malformed(
            "frame is not in canonical postcard encoding".into(),
        ));
    }
    Ok(value)
}

/// A postcard serializer output that compares with `expected` instead of storing.
pub(super) struct SameBytes<'a> {
    pub(super) expected: &'a [u8],
}

impl postcard::ser_flavors::Flavor for SameBytes<'_> {
    /// True when the encoding equals `expected` exactly.
    type Output = bool;

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        match self.expected.split_first() {
            Some((&b, rest)) if b == data => {
                self.expected = rest;
                Ok(())
            }
            // Stop at the first difference (the error is mapped to "not canonical").
            _ => Err(postcard::Error::SerializeBufferFull),
        }
    }

    fn finalize(self) -> postcard::Result<bool> {
        Ok(self.expected.is_empty())
    }
}

/// Encodes a chunk-stream header: a frame like every other ([`encode_frame`]); the gateway
/// reads it with a [`FrameDecoder`] limited to [`MAX_CHUNK_HEADER`].
pub fn encode_chunk_header(header: &ChunkHeader) -> Bytes {
    encode_frame(header)
}

/// Decodes a chunk-stream header body (the bytes after its length prefix, at most
/// [`MAX_CHUNK_HEADER`]); trailing or non-canonical bytes are refused (what the
/// [`FrameDecoder`] does with a header frame).
pub fn decode_chunk_header(body: &[u8]) -> Result<ChunkHeader, ProtocolError> {
    if body.len() > MAX_CHUNK_HEADER {
        return Err(ProtocolError::FrameTooLarge {
            len: body.len(),
            max: MAX_CHUNK_HEADER,
        });
    }
    decode_exact(body)
}

/// Incremental decoder of length-prefixed frames. It holds only bytes that have arrived
/// (never reserving room for a declared length), refuses a declared length over its limit
/// as soon as the 4-byte prefix is in, and reports how much more it needs
/// ([`Self::wanted`]) so that a reader never takes more than the current frame from the
/// stream.
pub struct FrameDecoder<T> {
    pub(super) buf: BytesMut,
    pub(super) max: usize,
    pub(super) _frame: std::marker::PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> FrameDecoder<T> {
    /// A decoder refusing frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
            _frame: std::marker::PhantomData,
        }
    }

    /// Changes the limit (the gateway raises it from [`MAX_HELLO_FRAME`] to
    /// [`MAX_CONTROL_FRAME`] once the peer is authenticated).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// The current limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The declared length of the frame being received, once its prefix is in.
    pub(super) fn declared(&self) -> Option<usize> {
        let prefix: [u8; 4] = self.buf.get(..4)?.try_into().expect("4 bytes");
        Some(u32::from_be_bytes(prefix) as usize)
    }

    /// How many more bytes the current frame needs (at least 1, at most `4 + max`): what
    /// a reader should ask the stream for, so that it never buffers beyond this frame.
    pub fn wanted(&self) -> usize {
        match self.declared() {
            None => 4 - self.buf.len(),
            Some(len) => (4 + len.min(self.max))
                .saturating_sub(self.buf.len())
                .max(1),
        }
    }

    /// The next complete frame, if buffered.
    pub fn next_frame(&mut self) -> Result<Option<T>, ProtocolError> {
        let Some(len) = self.declared() else {
            return Ok(None);
        };
        if len > self.max {
            return Err(ProtocolError::FrameTooLarge { len, max: self.max });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        self.buf.advance(4);
        let body = self.buf.split_to(len);
        decode_exact(&body).map(Some)
    }

    /// Call at end of stream: an error if a partial frame is left.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::Truncated)
        }
    }
}
