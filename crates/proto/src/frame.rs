//! Framing: `len: u32 LE | kind: u8 | body`, where `len` counts `kind` and `body`.
//!
//! | kind | body |
//! |------|------|
//! | 1 `Message` | a JSON-encoded [`Message`] |
//! | 2 `Data` | `stream: u32 LE` then the stream's bytes; an empty chunk closes the stream |

use std::io::{self, Read};

use crate::Message;

/// Bytes before the body: the length word and the kind byte.
pub const HEADER_LEN: usize = 5;
/// Largest accepted value of the length word (kind byte plus body). Anything larger is refused
/// before a byte of it is buffered.
pub const MAX_FRAME_LEN: usize = 1 << 20;

const KIND_MESSAGE: u8 = 1;
const KIND_DATA: u8 = 2;

/// One unit on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Message(Message),
    /// A chunk of byte stream `stream`; an empty `bytes` means end of stream.
    Data {
        stream: u32,
        bytes: Vec<u8>,
    },
}

/// Why bytes are not a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("agent frame length {0} exceeds the limit of {MAX_FRAME_LEN} bytes")]
    TooLong(usize),
    #[error("agent frame length 0 has no kind byte")]
    Empty,
    #[error("agent frame kind {0} is unknown")]
    UnknownKind(u8),
    #[error("agent data frame of {0} bytes is shorter than its 4-byte stream id")]
    ShortData(usize),
    #[error("agent message is not valid: {0}")]
    BadMessage(#[source] serde_json::Error),
    #[error("agent channel closed in the middle of a frame ({0} bytes of it read)")]
    Truncated(usize),
    #[error("agent channel: {0}")]
    Io(#[from] io::Error),
}

/// Appends the wire form of `frame` to `out`.
///
/// Fails only if the encoded frame would exceed [`MAX_FRAME_LEN`], which the peer would refuse.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    match frame {
        Frame::Message(message) => {
            out.push(KIND_MESSAGE);
            serde_json::to_writer(&mut *out, message).map_err(FrameError::BadMessage)?;
        }
        Frame::Data { stream, bytes } => {
            out.push(KIND_DATA);
            out.extend_from_slice(&stream.to_le_bytes());
            out.extend_from_slice(bytes);
        }
    }
    let len = out.len() - start - 4;
    if len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(FrameError::TooLong(len));
    }
    let word = u32::try_from(len).expect("MAX_FRAME_LEN fits in u32");
    out[start..start + 4].copy_from_slice(&word.to_le_bytes());
    Ok(())
}

/// Decodes the first frame in `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame, and otherwise the frame with the
/// number of bytes it used. Never panics, whatever `buf` holds.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(word) = buf.get(..4) else {
        return Ok(None);
    };
    let len = body_len(word.try_into().expect("slice of length 4"))?;
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, 4 + len)))
}

fn body_len(word: [u8; 4]) -> Result<usize, FrameError> {
    let len = usize::try_from(u32::from_le_bytes(word)).unwrap_or(usize::MAX);
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLong(len));
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    Ok(len)
}

fn decode_body(body: &[u8]) -> Result<Frame, FrameError> {
    let (&kind, rest) = body.split_first().ok_or(FrameError::Empty)?;
    match kind {
        KIND_MESSAGE => serde_json::from_slice(rest).map(Frame::Message).map_err(FrameError::BadMessage),
        KIND_DATA => {
            let (stream, bytes) = rest.split_first_chunk::<4>().ok_or(FrameError::ShortData(rest.len()))?;
            Ok(Frame::Data { stream: u32::from_le_bytes(*stream), bytes: bytes.to_vec() })
        }
        other => Err(FrameError::UnknownKind(other)),
    }
}

/// Reads whole frames from a byte stream.
pub struct FrameReader<R> {
    inner: R,
    body: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader { inner, body: Vec::new() }
    }

    /// The next frame, or `Ok(None)` at a clean end of stream (between frames).
    pub fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let mut word = [0u8; 4];
        let got = read_full(&mut self.inner, &mut word)?;
        if got == 0 {
            return Ok(None);
        }
        if got < word.len() {
            return Err(FrameError::Truncated(got));
        }
        let len = body_len(word)?;
        self.body.resize(len, 0);
        let got = read_full(&mut self.inner, &mut self.body)?;
        if got < len {
            return Err(FrameError::Truncated(4 + got));
        }
        decode_body(&self.body).map(Some)
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Fills `buf` unless the stream ends first; returns how much was read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BootTimes, PROTOCOL_VERSION};

    fn wire(frame: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        encode(frame, &mut out).unwrap();
        out
    }

    fn message_frame(json: &[u8]) -> Vec<u8> {
        let len = u32::try_from(json.len() + 1).unwrap();
        [&len.to_le_bytes()[..], &[KIND_MESSAGE], json].concat()
    }

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Message(Message::Hello {
                version: PROTOCOL_VERSION,
                unix_time_ns: 1_700_000_000_000_000_000,
                entropy: vec![7; 64],
            }),
            Frame::Message(Message::Ready {
                version: PROTOCOL_VERSION,
                agent_version: "0.1.0".into(),
                boot: BootTimes { init_start_ns: 1, ready_ns: 2 },
            }),
            Frame::Message(Message::Ping { seq: u64::MAX }),
            Frame::Message(Message::MountRoot {
                device: "/dev/vda".into(),
                programs: vec!["sh".into()],
                path: "/bin".into(),
            }),
            Frame::Message(Message::Shutdown),
            Frame::Data { stream: 7, bytes: b"hello".to_vec() },
            Frame::Data { stream: 0, bytes: Vec::new() },
        ]
    }

    #[test]
    fn round_trips_through_decode_and_reader() {
        let mut all = Vec::new();
        for frame in samples() {
            let bytes = wire(&frame);
            let (back, used) = decode(&bytes).unwrap().unwrap();
            assert_eq!((back, used), (frame, bytes.len()));
            all.extend(bytes);
        }
        let mut reader = FrameReader::new(&all[..]);
        for frame in samples() {
            assert_eq!(reader.read_frame().unwrap(), Some(frame));
        }
        assert_eq!(reader.read_frame().unwrap(), None);
    }

    #[test]
    fn every_prefix_is_incomplete_not_an_error() {
        for frame in samples() {
            let bytes = wire(&frame);
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).unwrap().is_none(), "prefix {cut} of {frame:?}");
            }
        }
    }

    #[test]
    fn malformed_frames_are_refused_with_a_reason() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0, 0, 0, 0], "length 0 has no kind byte"),
            (vec![0xff, 0xff, 0xff, 0xff, 1], "exceeds the limit"),
            (u32::try_from(MAX_FRAME_LEN + 1).unwrap().to_le_bytes().to_vec(), "exceeds the limit"),
            (vec![1, 0, 0, 0, 9], "kind 9 is unknown"),
            (vec![3, 0, 0, 0, 2, 1, 2], "shorter than its 4-byte stream id"),
            (vec![3, 0, 0, 0, 1, b'{', b'}'], "not valid"),
            (message_frame(br#"{"type":1}"#), "not valid"),
            (message_frame(br#"{"type":"launch_missiles"}"#), "not valid"),
            (message_frame(br#"{"type":"ping","seq":-1}"#), "not valid"),
            (message_frame(br#"{"type":"ping","seq":1,"x":0}"#), "not valid"),
            (message_frame(&[0xc3, 0x28, 0xa0]), "not valid"),
        ];
        for (bytes, want) in cases {
            let err = decode(&bytes).expect_err(&format!("{bytes:?} decoded"));
            assert!(err.to_string().contains(want), "{bytes:?}: {err} does not contain {want:?}");
            // The reader agrees with the slice decoder.
            let err = FrameReader::new(&bytes[..]).read_frame().expect_err("reader accepted it");
            assert!(err.to_string().contains(want), "reader on {bytes:?}: {err}");
        }
    }

    #[test]
    fn truncated_stream_is_reported_by_the_reader() {
        let bytes = wire(&Frame::Data { stream: 1, bytes: vec![1; 100] });
        let err = FrameReader::new(&bytes[..50]).read_frame().unwrap_err();
        assert!(matches!(err, FrameError::Truncated(50)), "{err}");
        let err = FrameReader::new(&bytes[..2]).read_frame().unwrap_err();
        assert!(matches!(err, FrameError::Truncated(2)), "{err}");
    }

    #[test]
    fn oversized_frames_are_not_encoded() {
        let frame = Frame::Data { stream: 1, bytes: vec![0; MAX_FRAME_LEN] };
        let mut out = vec![9];
        assert!(matches!(encode(&frame, &mut out), Err(FrameError::TooLong(_))));
        assert_eq!(out, vec![9], "a refused frame leaves the buffer as it was");
    }

    /// Deterministic garbage: decoding arbitrary bytes returns, it never panics.
    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = usize::try_from(next() % 64).unwrap();
            let mut bytes: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
            if bytes.len() >= 4 && next() % 2 == 0 {
                // Plausible length words reach the body decoders more often.
                let body = u32::try_from(bytes.len() - 4).unwrap();
                bytes[..4].copy_from_slice(&body.to_le_bytes());
            }
            let _ = decode(&bytes);
            let _ = FrameReader::new(&bytes[..]).read_frame();
        }
    }

    /// The committed fuzz corpus (see `fuzz/`) decodes without panicking.
    #[test]
    fn fuzz_corpus_never_panics() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let _ = decode(&bytes);
            seen += 1;
        }
        assert!(seen > 0, "no corpus in {}", dir.display());
    }
}
