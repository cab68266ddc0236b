//! Utilities to work with raw WebSocket frames.

pub mod coding;

#[allow(clippy::module_inception)]
mod frame;
mod mask;
mod utf8;

pub use self::{
    frame::{CloseFrame, Frame, FrameHeader},
    utf8::Utf8Bytes,
};

use crate::{
    error::{CapacityError, Error, ProtocolError, Result},
    protocol::frame::mask::apply_mask,
    Message,
};
use bytes::BytesMut;
use log::*;
use std::io::{self, Cursor, Error as IoError, ErrorKind as IoErrorKind, Read, Write};

/// Read buffer size used for `FrameSocket`.
const READ_BUF_LEN: usize = 128 * 1024;

/// A reader and writer for WebSocket frames.
#[derive(Debug)]
pub struct FrameSocket<Stream> {
    /// The underlying network stream.
    stream: Stream,
    /// Codec for reading/writing frames.
    codec: FrameCodec,
}

impl<Stream> FrameSocket<Stream> {
    /// Create a new frame socket.
    pub fn new(stream: Stream) -> Self {
        FrameSocket { stream, codec: FrameCodec::new(READ_BUF_LEN) }
    }

    /// Create a new frame socket from partially read data.
    pub fn from_partially_read(stream: Stream, part: Vec<u8>) -> Self {
        FrameSocket { stream, codec: FrameCodec::from_partially_read(part, READ_BUF_LEN) }
    }

    /// Extract a stream from the socket.
    pub fn into_inner(self) -> (Stream, BytesMut) {
        (self.stream, self.codec.in_buffer)
    }

    /// Returns a shared reference to the inner stream.
    pub fn get_ref(&self) -> &Stream {
        &self.stream
    }

    /// Returns a mutable reference to the inner stream.
    pub fn get_mut(&mut self) -> &mut Stream {
        &mut self.stream
    }
}

impl<Stream> FrameSocket<Stream>
where
    Stream: Read,
{
    /// Read a frame from stream.
    pub fn read(&mut self, max_size: Option<usize>) -> Result<Option<Frame>> {
        self.codec.read_frame(&mut self.stream, max_size, false, true)
    }
}

impl<Stream> FrameSocket<Stream>
where
    Stream: Write,
{
    /// Writes and immediately flushes a frame.
    /// Equivalent to calling [`write`](Self::write) then [`flush`](Self::flush).
    pub fn send(&mut self, frame: Frame) -> Result<()> {
        self.write(frame)?;
        self.flush()
    }

    /// Write a frame to stream.
    ///
    /// A subsequent call should be made to [`flush`](Self::flush) to flush writes.
    ///
    /// This function guarantees that the frame is queued unless [`Error::WriteBufferFull`]
    /// is returned.
    /// In order to handle WouldBlock or Incomplete, call [`flush`](Self::flush) afterwards.
    pub fn write(&mut self, frame: Frame) -> Result<()> {
        self.codec.buffer_frame(&mut self.stream, frame)
    }

    /// Flush writes.
    pub fn flush(&mut self) -> Result<()> {
        self.codec.write_out_buffer(&mut self.stream)?;
        Ok(self.stream.flush()?)
    }
}

/// A codec for WebSocket frames.
#[derive(Debug)]
pub(super) struct FrameCodec {
    /// Buffer to read data from the stream.
    in_buffer: BytesMut,
    in_buf_max_read: usize,
    /// Buffer to send packets to the network.
    out_buffer: Vec<u8>,
    /// Capacity limit for `out_buffer`.
    max_out_buffer_len: usize,
    /// Buffer target length to reach before writing to the stream
    /// on calls to `buffer_frame`.
    ///
    /// Setting this to non-zero will buffer small writes from hitting
    /// the stream.
    out_buffer_write_len: usize,
    /// Header and remaining size of the incoming packet being processed.
    header: Option<(FrameHeader, u64)>,
    /// callsignal patch: `in_buffer` was grown past `in_buf_max_read` for a large frame.
    in_grown: bool,
    /// callsignal patch: `WebSocketConfig::release_buffers`.
    release_buffers: bool,
}

impl FrameCodec {
    /// Create a new frame codec.
    pub(super) fn new(in_buf_len: usize) -> Self {
        Self {
            in_buffer: BytesMut::with_capacity(in_buf_len),
            in_buf_max_read: in_buf_len.max(FrameHeader::MAX_SIZE),
            out_buffer: <_>::default(),
            max_out_buffer_len: usize::MAX,
            out_buffer_write_len: 0,
            header: None,
            in_grown: false,
            release_buffers: false,
        }
    }

    /// Create a new frame codec from partially read data.
    pub(super) fn from_partially_read(part: Vec<u8>, min_in_buf_len: usize) -> Self {
        let mut in_buffer = BytesMut::from_iter(part);
        in_buffer.reserve(min_in_buf_len.saturating_sub(in_buffer.len()));
        Self {
            in_buffer,
            in_buf_max_read: min_in_buf_len.max(FrameHeader::MAX_SIZE),
            out_buffer: <_>::default(),
            max_out_buffer_len: usize::MAX,
            out_buffer_write_len: 0,
            header: None,
            in_grown: false,
            release_buffers: false,
        }
    }

    /// Sets a maximum size for the out buffer.
    pub(super) fn set_max_out_buffer_len(&mut self, max: usize) {
        self.max_out_buffer_len = max;
    }

    /// callsignal patch: sets `WebSocketConfig::release_buffers`.
    pub(super) fn set_release_buffers(&mut self, release: bool) {
        self.release_buffers = release;
    }

    /// Sets [`Self::buffer_frame`] buffer target length to reach before
    /// writing to the stream.
    pub(super) fn set_out_buffer_write_len(&mut self, len: usize) {
        self.out_buffer_write_len = len;
    }

    /// Read a frame from the provided stream.
    pub(super) fn read_frame(
        &mut self,
        stream: &mut impl Read,
        max_size: Option<usize>,
        unmask: bool,
        accept_unmasked: bool,
    ) -> Result<Option<Frame>> {
        let max_size = max_size.unwrap_or_else(usize::max_value);

        let mut payload = loop {
            if self.header.is_none() {
                let mut cursor = Cursor::new(&mut self.in_buffer);
                self.header = FrameHeader::parse(&mut cursor)?;
                let advanced = cursor.position();
                bytes::Buf::advance(&mut self.in_buffer, advanced as _);

                if let Some((_, len)) = &self.header {
                    // Enforce frame size limit early. Compare in u64 before
                    // narrowing so a length above usize::MAX can't wrap on
                    // 32-bit/wasm32 targets and slip past the check.
                    if *len > max_size as u64 {
                        return Err(Error::Capacity(CapacityError::MessageTooLong {
                            size: *len as usize,
                            max_size,
                        }));
                    }
                    let len = *len as usize;

                    // Reserve full message length only once, even for multiple
                    // loops or if WouldBlock errors cause multiple fn calls.
                    self.in_buffer.reserve(len);
                    // callsignal patch: remember that the buffer outgrew its size.
                    self.in_grown |= self.release_buffers && len > self.in_buf_max_read;
                } else if self.release_buffers && self.in_buffer.capacity() == 0 {
                    // callsignal patch: the buffer was let go of while idle (`read_in`); take a
                    // whole read's worth again, not just a header's.
                    self.in_buffer = BytesMut::with_capacity(self.in_buf_max_read);
                } else {
                    self.in_buffer.reserve(FrameHeader::MAX_SIZE);
                }
            }

            if let Some((_, len)) = &self.header {
                let len = *len as usize;
                if len <= self.in_buffer.len() {
                    let payload = self.in_buffer.split_to(len);
                    // callsignal patch (vendor/tungstenite/PATCHES.md): a read buffer that grew
                    // for a large frame goes back to its configured size once it holds nothing
                    // more (the large allocation is freed with the last payload cut from it),
                    // instead of staying with the connection for life.
                    if self.in_grown && self.in_buffer.is_empty() {
                        self.in_buffer = BytesMut::with_capacity(self.in_buf_max_read);
                        self.in_grown = false;
                    }
                    break payload;
                }
            }

            // Not enough data in buffer.
            if self.read_in(stream)? == 0 {
                trace!("no frame received");
                return Ok(None);
            }
        };

        let (mut header, length) = self.header.take().expect("Bug: no frame header");
        debug_assert_eq!(payload.len() as u64, length);

        if unmask {
            if let Some(mask) = header.mask.take() {
                // A server MUST remove masking for data frames received from a client
                // as described in Section 5.3. (RFC 6455)
                apply_mask(&mut payload, mask);
            } else if !accept_unmasked {
                // The server MUST close the connection upon receiving a
                // frame that is not masked. (RFC 6455)
                // The only exception here is if the user explicitly accepts given
                // stream by setting WebSocketConfig.accept_unmasked_frames to true
                return Err(Error::Protocol(ProtocolError::UnmaskedFrameFromClient));
            }
        }

        let frame = Frame::from_payload(header, payload.freeze());
        trace!("received frame {frame}");
        Ok(Some(frame))
    }

    /// Read into available `in_buffer` capacity.
    fn read_in(&mut self, stream: &mut impl Read) -> io::Result<usize> {
        let len = self.in_buffer.len();
        debug_assert!(self.in_buffer.capacity() > len);
        self.in_buffer.resize(self.in_buffer.capacity().min(len + self.in_buf_max_read), 0);
        let size = stream.read(&mut self.in_buffer[len..]);
        self.in_buffer.truncate(len + size.as_ref().copied().unwrap_or(0));
        // callsignal patch (vendor/tungstenite/PATCHES.md): a connection with nothing to read,
        // nothing buffered and no frame begun lets its read buffer go; the next frame header
        // takes a new one (`read_frame`). An idle connection then holds no read buffer at all.
        if self.release_buffers
            && len == 0
            && self.header.is_none()
            && matches!(&size, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        {
            self.in_buffer = BytesMut::new();
            self.in_grown = false;
        }
        size
    }

    /// Writes a frame into the `out_buffer`.
    /// If the out buffer size is over the `out_buffer_write_len` will also write
    /// the out buffer into the provided `stream`.
    ///
    /// To ensure buffered frames are written call [`Self::write_out_buffer`].
    ///
    /// May write to the stream, will **not** flush.
    pub(super) fn buffer_frame<Stream>(&mut self, stream: &mut Stream, frame: Frame) -> Result<()>
    where
        Stream: Write,
    {
        if frame.len() + self.out_buffer.len() > self.max_out_buffer_len {
            return Err(Error::WriteBufferFull(Message::Frame(frame).into()));
        }

        trace!("writing frame {frame}");

        self.out_buffer.reserve(frame.len());
        frame.format_into_buf(&mut self.out_buffer).expect("Bug: can't write to vector");

        if self.out_buffer.len() > self.out_buffer_write_len {
            self.write_out_buffer(stream)
        } else {
            Ok(())
        }
    }

    /// Writes the out_buffer to the provided stream.
    ///
    /// Does **not** flush.
    pub(super) fn write_out_buffer<Stream>(&mut self, stream: &mut Stream) -> Result<()>
    where
        Stream: Write,
    {
        while !self.out_buffer.is_empty() {
            let len = stream.write(&self.out_buffer)?;
            if len == 0 {
                // This is the same as "Connection reset by peer"
                return Err(IoError::new(
                    IoErrorKind::ConnectionReset,
                    "Connection reset while sending",
                )
                .into());
            }
            self.out_buffer.drain(0..len);
        }
        // callsignal patch (vendor/tungstenite/PATCHES.md): an emptied buffer is let go of. A
        // `Vec` keeps its capacity when drained, so every connection held the largest frame it
        // had ever sent (its `welcome`, a 3 KB SDP, up to the message limit) for life.
        if self.release_buffers && self.out_buffer.capacity() > 0 {
            self.out_buffer = Vec::new();
        }

        Ok(())
    }
}

#[cfg(test)]
mod tests {

    use crate::error::{CapacityError, Error};

    use super::{Frame, FrameSocket};

    use std::io::Cursor;

    /// callsignal patch (PATCHES.md): with `release_buffers`, a written-out buffer is freed and
    /// a read buffer grown for a large frame goes back to its size; without it, upstream's
    /// behaviour (both keep their largest size).
    #[test]
    fn release_buffers_frees_what_is_not_in_use() {
        use super::FrameCodec;
        for release in [false, true] {
            let mut codec = FrameCodec::new(1024);
            codec.set_release_buffers(release);
            let mut out = Vec::new();
            codec.buffer_frame(&mut out, Frame::message(vec![7u8; 3000], crate::protocol::frame::coding::OpCode::Data(crate::protocol::frame::coding::Data::Binary), true)).unwrap();
            codec.write_out_buffer(&mut out).unwrap();
            assert_eq!(codec.out_buffer.capacity() == 0, release, "release={release}");
            // A 5,000-byte frame, then a small one, read from one stream.
            let mut raw = Vec::new();
            Frame::message(vec![1u8; 5000], crate::protocol::frame::coding::OpCode::Data(crate::protocol::frame::coding::Data::Binary), true).format_into_buf(&mut raw).unwrap();
            let mut stream = Cursor::new(raw);
            let frame = codec.read_frame(&mut stream, None, false, true).unwrap().unwrap();
            assert_eq!(frame.into_payload().len(), 5000);
            if release {
                assert!(codec.in_buffer.capacity() <= 1024, "{}", codec.in_buffer.capacity());
            }
            // Still reads what follows, small or large.
            let mut raw = Vec::new();
            Frame::message(vec![2u8; 10], crate::protocol::frame::coding::OpCode::Data(crate::protocol::frame::coding::Data::Binary), true).format_into_buf(&mut raw).unwrap();
            Frame::message(vec![3u8; 2000], crate::protocol::frame::coding::OpCode::Data(crate::protocol::frame::coding::Data::Binary), true).format_into_buf(&mut raw).unwrap();
            let mut stream = Cursor::new(raw);
            assert_eq!(codec.read_frame(&mut stream, None, false, true).unwrap().unwrap().into_payload(), &[2u8; 10][..]);
            assert_eq!(codec.read_frame(&mut stream, None, false, true).unwrap().unwrap().into_payload().len(), 2000);
        }
    }

    /// A `Read` that yields its chunks one per call, then `WouldBlock`: a socket with nothing
    /// more to read yet.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl std::io::Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let Some(mut chunk) = self.0.pop_front() else {
                return Err(std::io::ErrorKind::WouldBlock.into());
            };
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            if n < chunk.len() {
                self.0.push_front(chunk.split_off(n));
            }
            Ok(n)
        }
    }

    /// callsignal patch (PATCHES.md): with `release_buffers`, an idle connection (a read that
    /// would block, nothing buffered, no frame begun) holds no read buffer; a frame split at
    /// every byte, in its header and its payload, and a large one after, still arrive whole.
    #[test]
    fn release_buffers_lets_an_idle_read_buffer_go() {
        use super::FrameCodec;
        let binary = crate::protocol::frame::coding::OpCode::Data(crate::protocol::frame::coding::Data::Binary);
        for release in [false, true] {
            let mut codec = FrameCodec::new(1024);
            codec.set_release_buffers(release);
            let mut stream = Chunks(Default::default());
            assert!(codec.read_frame(&mut stream, None, false, true).is_err());
            assert_eq!(codec.in_buffer.capacity() == 0, release, "release={release}");
            let mut raw = Vec::new();
            Frame::message(vec![5u8; 300], binary, true).format_into_buf(&mut raw).unwrap();
            Frame::message(vec![6u8; 70_000], binary, true).format_into_buf(&mut raw).unwrap();
            let first_len = raw.len() - 70_000 - 10;
            // Byte by byte, with a would-block between every byte of the first frame.
            for (i, byte) in raw[..first_len].iter().enumerate() {
                stream.0.push_back(vec![*byte]);
                let got = codec.read_frame(&mut stream, None, false, true);
                if i + 1 < first_len {
                    assert!(got.is_err(), "byte {i}: {got:?}");
                } else {
                    assert_eq!(got.unwrap().unwrap().into_payload(), &[5u8; 300][..]);
                }
            }
            assert!(codec.read_frame(&mut stream, None, false, true).is_err());
            assert_eq!(codec.in_buffer.capacity() == 0, release);
            stream.0.push_back(raw[first_len..].to_vec());
            let frame = loop {
                match codec.read_frame(&mut stream, None, false, true) {
                    Ok(Some(frame)) => break frame,
                    other => panic!("{other:?}"),
                }
            };
            assert_eq!(frame.into_payload(), &[6u8; 70_000][..]);
            assert!(codec.read_frame(&mut stream, None, false, true).is_err());
            assert_eq!(codec.in_buffer.capacity() == 0, release);
        }
    }

    #[test]
    fn read_frames() {
        env_logger::init();

        let raw = Cursor::new(vec![
            0x82, 0x07, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x82, 0x03, 0x03, 0x02, 0x01,
            0x99,
        ]);
        let mut sock = FrameSocket::new(raw);

        assert_eq!(
            sock.read(None).unwrap().unwrap().into_payload(),
            &[0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07][..]
        );
        assert_eq!(sock.read(None).unwrap().unwrap().into_payload(), &[0x03, 0x02, 0x01][..]);
        assert!(sock.read(None).unwrap().is_none());

        let (_, rest) = sock.into_inner();
        assert_eq!(rest, vec![0x99]);
    }

    #[test]
    fn from_partially_read() {
        let raw = Cursor::new(vec![0x02, 0x03, 0x04, 0x05, 0x06, 0x07]);
        let mut sock = FrameSocket::from_partially_read(raw, vec![0x82, 0x07, 0x01]);
        assert_eq!(
            sock.read(None).unwrap().unwrap().into_payload(),
            &[0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07][..]
        );
    }

    #[test]
    fn write_frames() {
        let mut sock = FrameSocket::new(Vec::new());

        let frame = Frame::ping(vec![0x04, 0x05]);
        sock.send(frame).unwrap();

        let frame = Frame::pong(vec![0x01]);
        sock.send(frame).unwrap();

        let (buf, _) = sock.into_inner();
        assert_eq!(buf, vec![0x89, 0x02, 0x04, 0x05, 0x8a, 0x01, 0x01]);
    }

    #[test]
    fn parse_overflow() {
        let raw = Cursor::new(vec![
            0x83, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00,
        ]);
        let mut sock = FrameSocket::new(raw);
        let _ = sock.read(None); // should not crash
    }

    #[test]
    fn size_limit_hit() {
        let raw = Cursor::new(vec![0x82, 0x07, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07]);
        let mut sock = FrameSocket::new(raw);
        assert!(matches!(
            sock.read(Some(5)),
            Err(Error::Capacity(CapacityError::MessageTooLong { size: 7, max_size: 5 }))
        ));
    }

    #[test]
    #[cfg(target_pointer_width = "32")]
    fn length_above_usize_max_rejected() {
        // 64-bit payload length 0x1_0000_0005 does not fit a 32-bit usize; it
        // must be rejected rather than wrapping to 5 when narrowed.
        let raw = Cursor::new(vec![0x82, 0x7f, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x05]);
        let mut sock = FrameSocket::new(raw);
        assert!(matches!(
            sock.read(None),
            Err(Error::Capacity(CapacityError::MessageTooLong { size: 5, max_size: usize::MAX }))
        ));
    }
}
