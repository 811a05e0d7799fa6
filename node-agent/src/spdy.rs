//! SPDY/3.1 framing, the part `kubectl port-forward` needs (the framing of Go's spdystream,
//! which client-go speaks, tunnelled in a WebSocket or over a raw upgrade). Eight-byte frame
//! headers: a control frame starts with bit 1, version 3, its type, flags and a 24-bit length;
//! a data frame with a 31-bit stream id, flags (FIN = 1) and the length. Header blocks
//! (`count`, then length-prefixed names and values) go through one zlib stream per direction,
//! primed with the protocol's dictionary and sync-flushed after every block.
//!
//! No flow control: spdystream never enforces windows, so WINDOW_UPDATE is read and ignored.

use std::io;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const SETTINGS: u16 = 4;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const HEADERS: u16 = 8;
pub const WINDOW_UPDATE: u16 = 9;
pub const FLAG_FIN: u8 = 1;
/// RST_STREAM status codes.
pub const PROTOCOL_ERROR: u32 = 1;
pub const CANCEL: u32 = 5;
/// Frames larger than this are refused (spdystream writes at most 32 KiB of data at once).
const MAX_FRAME: usize = 1 << 20;

/// The SPDY/3 header-compression dictionary (draft 3, section 2.6.10.1): these words, each
/// with a 4-byte big-endian length, followed by `TAIL` as it is.
const WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];
const TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

fn dictionary() -> Vec<u8> {
    let mut d = Vec::with_capacity(1500);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
}

fn invalid(msg: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("spdy: {msg}"))
}

/// One frame as the port-forward session needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    SynStream {
        stream: u32,
        fin: bool,
        headers: Vec<(String, String)>,
    },
    SynReply {
        stream: u32,
        headers: Vec<(String, String)>,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Ping(u32),
    GoAway,
    Data {
        stream: u32,
        fin: bool,
        data: Bytes,
    },
    /// SETTINGS, HEADERS, WINDOW_UPDATE and unknown types: nothing to do.
    Ignored(u16),
}

/// Reads frames off a byte stream; owns the inbound header decompressor.
pub struct Reader<R> {
    io: R,
    inflate: Decompress,
}

impl<R> std::fmt::Debug for Reader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("spdy::Reader")
    }
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(io: R) -> Self {
        Reader {
            io,
            inflate: Decompress::new(true),
        }
    }

    /// The next frame; None when the peer closed between frames.
    pub async fn next(&mut self) -> io::Result<Option<Frame>> {
        let mut head = [0u8; 8];
        let mut got = 0;
        while got < head.len() {
            let n = self.io.read(&mut head[got..]).await?;
            if n == 0 {
                return if got == 0 {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
            got += n;
        }
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > MAX_FRAME {
            return Err(invalid(format!("a frame of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        self.io.read_exact(&mut body).await?;
        let word = |i: usize| -> io::Result<u32> {
            body.get(i..i + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| invalid("a short control frame"))
        };
        if head[0] & 0x80 == 0 {
            let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            return Ok(Some(Frame::Data {
                stream,
                fin: flags & FLAG_FIN != 0,
                data: Bytes::from(body),
            }));
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != 3 {
            return Err(invalid(format!("version {version}, not 3")));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        Ok(Some(match kind {
            SYN_STREAM => {
                let stream = word(0)? & 0x7fff_ffff;
                let block = body
                    .get(10..)
                    .ok_or_else(|| invalid("a short SYN_STREAM"))?;
                Frame::SynStream {
                    stream,
                    fin: flags & FLAG_FIN != 0,
                    headers: parse_block(&self.inflate_block(block)?)?,
                }
            }
            SYN_REPLY | HEADERS => {
                let stream = word(0)? & 0x7fff_ffff;
                let headers = parse_block(&self.inflate_block(&body[4..])?)?;
                if kind == HEADERS {
                    Frame::Ignored(kind)
                } else {
                    Frame::SynReply { stream, headers }
                }
            }
            RST_STREAM => Frame::RstStream {
                stream: word(0)? & 0x7fff_ffff,
                status: word(4)?,
            },
            PING => Frame::Ping(word(0)?),
            GOAWAY => Frame::GoAway,
            other => Frame::Ignored(other),
        }))
    }

    /// Inflates one header block; the stream's state carries over to the next block.
    fn inflate_block(&mut self, mut input: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        loop {
            let (before_in, before_out) = (self.inflate.total_in(), out.len());
            let r = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            input = &input[(self.inflate.total_in() - before_in) as usize..];
            match r {
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&dictionary())
                        .map_err(|e| invalid(format!("the header dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(invalid(format!("a header block: {e}"))),
                Ok(_) => {}
            }
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
            if out.len() == before_out && out.len() < out.capacity() {
                return Err(invalid("a header block that does not inflate"));
            }
            out.reserve(4096);
        }
    }
}

fn parse_block(b: &[u8]) -> io::Result<Vec<(String, String)>> {
    let mut at = 0usize;
    let mut take = |n: usize| -> io::Result<&[u8]> {
        let s = b
            .get(at..at + n)
            .ok_or_else(|| invalid("a short header block"))?;
        at += n;
        Ok(s)
    };
    let len = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize;
    let count = len(take(4)?);
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let n = len(take(4)?);
        let name = String::from_utf8_lossy(take(n)?).to_ascii_lowercase();
        let n = len(take(4)?);
        let value = String::from_utf8_lossy(take(n)?).into_owned();
        // Several values of one name are NUL-separated.
        for v in value.split('\0') {
            headers.push((name.clone(), v.to_string()));
        }
    }
    Ok(headers)
}

/// Serializes frames; owns the outbound header compressor, so one writer per connection
/// encodes every frame in the order they go on the wire.
pub struct Writer {
    deflate: Compress,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("spdy::Writer")
    }
}

impl Writer {
    pub fn new() -> io::Result<Self> {
        let mut deflate = Compress::new(Compression::best(), true);
        deflate
            .set_dictionary(&dictionary())
            .map_err(|e| invalid(format!("the header dictionary: {e}")))?;
        Ok(Writer { deflate })
    }

    /// Appends `frame` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> io::Result<()> {
        let control = |out: &mut Vec<u8>, kind: u16, flags: u8, body: &[u8]| {
            out.extend_from_slice(&[0x80, 3]);
            out.extend_from_slice(&kind.to_be_bytes());
            out.push(flags);
            out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            out.extend_from_slice(body);
        };
        match frame {
            Frame::SynStream {
                stream,
                fin,
                headers,
            } => {
                let mut body = stream.to_be_bytes().to_vec();
                body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                body.extend(self.deflate_block(headers)?);
                control(out, SYN_STREAM, u8::from(*fin), &body);
            }
            Frame::SynReply { stream, headers } => {
                let mut body = stream.to_be_bytes().to_vec();
                body.extend(self.deflate_block(headers)?);
                control(out, SYN_REPLY, 0, &body);
            }
            Frame::RstStream { stream, status } => {
                let mut body = stream.to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(out, RST_STREAM, 0, &body);
            }
            Frame::Ping(id) => control(out, PING, 0, &id.to_be_bytes()),
            Frame::GoAway => control(out, GOAWAY, 0, &[0; 8]),
            Frame::Data { stream, fin, data } => {
                if data.len() >= 1 << 24 {
                    return Err(invalid("a data frame over 16 MiB"));
                }
                out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
                out.push(u8::from(*fin));
                out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                out.extend_from_slice(data);
            }
            Frame::Ignored(_) => {}
        }
        Ok(())
    }

    fn deflate_block(&mut self, headers: &[(String, String)]) -> io::Result<Vec<u8>> {
        let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
        for (k, v) in headers {
            for s in [k.to_ascii_lowercase().as_bytes(), v.as_bytes()] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s);
            }
        }
        let mut input = &raw[..];
        let mut out = Vec::with_capacity(raw.len() + 64);
        loop {
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| invalid(format!("compressing headers: {e}")))?;
            input = &input[(self.deflate.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(1024);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_dictionary_has_the_length_the_draft_gives() {
        // SPDY/3 draft 3 §2.6.10.1 lists 1423 bytes.
        assert_eq!(dictionary().len(), 1423);
    }

    #[tokio::test]
    async fn frames_survive_a_round_trip_with_compressed_headers_that_share_one_stream() {
        let mut w = Writer::new().unwrap();
        let mut wire = Vec::new();
        let frames = vec![
            Frame::SynStream {
                stream: 1,
                fin: false,
                headers: h(&[
                    ("streamType", "error"),
                    ("port", "8080"),
                    ("requestID", "0"),
                ]),
            },
            Frame::SynStream {
                stream: 3,
                fin: false,
                headers: h(&[("streamType", "data"), ("port", "8080"), ("requestID", "0")]),
            },
            Frame::SynReply {
                stream: 3,
                headers: vec![],
            },
            Frame::Data {
                stream: 3,
                fin: true,
                data: Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n"),
            },
            Frame::Ping(7),
            Frame::RstStream {
                stream: 1,
                status: CANCEL,
            },
        ];
        for f in &frames {
            w.encode(f, &mut wire).unwrap();
        }
        let mut r = Reader::new(&wire[..]);
        let mut got = Vec::new();
        while let Some(f) = r.next().await.unwrap() {
            got.push(f);
        }
        let lower = |f: &Frame| match f {
            Frame::SynStream {
                stream,
                fin,
                headers,
            } => Frame::SynStream {
                stream: *stream,
                fin: *fin,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect(),
            },
            f => f.clone(),
        };
        assert_eq!(got, frames.iter().map(lower).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_an_error_and_a_clean_end_is_none() {
        let mut wire = Vec::new();
        Writer::new()
            .unwrap()
            .encode(&Frame::Ping(1), &mut wire)
            .unwrap();
        assert!(Reader::new(&wire[..5]).next().await.is_err());
        assert_eq!(Reader::new(&[][..]).next().await.unwrap(), None);
    }
}
