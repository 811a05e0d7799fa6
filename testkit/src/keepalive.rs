//! An HTTP/1.1 GET client that keeps its connection between requests, as load generators (wrk,
//! hey, `ab -k`) and browsers do: the connection is reused while the server keeps it open and
//! reopened when the server closes it (busybox httpd closes after every answer; a proxy in
//! front of it need not). A request on a kept connection that fails before any byte of its
//! answer arrives is sent again once on a new connection: the server may have closed the
//! connection while it was idle, and a GET may be repeated.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Bodies larger than this are refused: the client is for benchmarks and tests.
const MAX_BODY: usize = 64 << 20;

/// One client; not shared between threads.
#[derive(Debug)]
pub struct KeepAlive {
    addr: String,
    conn: Option<BufReader<TcpStream>>,
    /// Connections opened so far (1 per request when the server never keeps one).
    pub connects: usize,
}

/// Why a request on a kept connection failed: before its answer began (sent again) or after.
enum Failure {
    Stale(anyhow::Error),
    Fatal(anyhow::Error),
}

impl KeepAlive {
    pub fn new(addr: &str) -> Self {
        KeepAlive {
            addr: addr.to_string(),
            conn: None,
            connects: 0,
        }
    }

    /// GET `path`: the body, which must come with a 200.
    pub fn get(&mut self, path: &str) -> Result<Vec<u8>> {
        let reused = self.conn.is_some();
        match self.try_get(path) {
            Ok(body) => Ok(body),
            Err(Failure::Stale(_)) if reused => {
                self.conn = None;
                self.try_get(path).map_err(|f| match f {
                    Failure::Stale(e) | Failure::Fatal(e) => e,
                })
            }
            Err(Failure::Stale(e) | Failure::Fatal(e)) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    fn connect(&mut self) -> Result<&mut BufReader<TcpStream>> {
        if self.conn.is_none() {
            let s =
                TcpStream::connect(&self.addr).with_context(|| format!("connect {}", self.addr))?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            s.set_nodelay(true)?;
            self.connects += 1;
            self.conn = Some(BufReader::new(s));
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    fn try_get(&mut self, path: &str) -> Result<Vec<u8>, Failure> {
        let addr = self.addr.clone();
        let conn = self.connect().map_err(Failure::Fatal)?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        conn.get_mut()
            .write_all(request.as_bytes())
            .map_err(|e| Failure::Stale(anyhow::Error::new(e).context(format!("write {addr}"))))?;
        let mut status = String::new();
        match conn.read_line(&mut status) {
            Ok(0) => {
                return Err(Failure::Stale(anyhow::anyhow!(
                    "{addr} closed the connection before answering"
                )));
            }
            Ok(_) => {}
            Err(e) => {
                return Err(Failure::Stale(
                    anyhow::Error::new(e).context(format!("read {addr}")),
                ));
            }
        }
        let answer = read_answer(conn, &status).map_err(Failure::Fatal)?;
        if !answer.keep {
            self.conn = None;
        }
        if answer.code != 200 {
            return Err(Failure::Fatal(anyhow::anyhow!(
                "{addr}{path}: {}",
                status.trim_end()
            )));
        }
        Ok(answer.body)
    }
}

struct Answer {
    code: u16,
    body: Vec<u8>,
    /// The connection may carry another request.
    keep: bool,
}

/// The head after the status line, then the body (Content-Length, chunked, or up to the close).
fn read_answer(conn: &mut BufReader<TcpStream>, status: &str) -> Result<Answer> {
    let mut parts = status.split_whitespace();
    let version = parts.next().unwrap_or_default();
    let code: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP status line: {status:?}"))?;
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1 answer: {status:?}");
    }
    let mut keep = version == "HTTP/1.1";
    let (mut length, mut chunked) = (None, false);
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            bail!("the connection closed inside the answer's head");
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            bail!("a header without a colon: {line:?}");
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                let n: usize = value
                    .parse()
                    .with_context(|| format!("Content-Length {value:?}"))?;
                if n > MAX_BODY {
                    bail!("a body of {n} bytes");
                }
                length = Some(n);
            }
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.split(',').any(|t| t.trim() == "close") {
                    keep = false;
                } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                    keep = true;
                }
            }
            _ => {}
        }
    }
    let body = if chunked {
        read_chunked(conn)?
    } else if let Some(n) = length {
        let mut body = vec![0; n];
        conn.read_exact(&mut body)?;
        body
    } else {
        keep = false;
        let mut body = Vec::new();
        conn.take(MAX_BODY as u64 + 1).read_to_end(&mut body)?;
        if body.len() > MAX_BODY {
            bail!("a body over {MAX_BODY} bytes");
        }
        body
    };
    Ok(Answer { code, body, keep })
}

fn read_chunked(conn: &mut BufReader<TcpStream>) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            bail!("the connection closed inside a chunked body");
        }
        let size = line.trim_end().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size.trim(), 16)
            .with_context(|| format!("a chunk size {size:?}"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut t = String::new();
                if conn.read_line(&mut t)? == 0 || t.trim_end().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            bail!("a chunked body over {MAX_BODY} bytes");
        }
        let start = body.len();
        body.resize(start + size, 0);
        conn.read_exact(&mut body[start..])?;
        let mut crlf = [0; 2];
        conn.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            bail!("a chunk not followed by CRLF");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server answering each connection's requests with `answers` in turn, then closing.
    fn serve(answers: Vec<Vec<&'static str>>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for per_conn in answers {
                let (s, _) = l.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                for a in per_conn {
                    // Read one request head.
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                            break;
                        }
                    }
                    w.write_all(a.as_bytes()).unwrap();
                }
            }
        });
        addr
    }

    #[test]
    fn reuses_a_kept_connection_and_reconnects_after_close() {
        let addr = serve(vec![
            vec![
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx",
            ],
            vec!["HTTP/1.0 200 OK\r\n\r\nto the end"],
            vec!["HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"],
        ]);
        let mut c = KeepAlive::new(&addr);
        assert_eq!(c.get("/").unwrap(), b"ok");
        assert_eq!(c.get("/").unwrap(), b"abcde");
        assert_eq!(c.get("/").unwrap(), b"x");
        assert_eq!(c.connects, 1);
        assert_eq!(c.get("/").unwrap(), b"to the end");
        assert_eq!(c.connects, 2);
        let e = c.get("/").unwrap_err().to_string();
        assert!(e.contains("503"), "{e}");
        assert_eq!(c.connects, 3);
    }

    #[test]
    fn a_kept_connection_closed_while_idle_is_replaced_once() {
        // The first connection answers one request and closes without saying so.
        let addr = serve(vec![
            vec!["HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"],
            vec!["HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"],
        ]);
        let mut c = KeepAlive::new(&addr);
        assert_eq!(c.get("/").unwrap(), b"a");
        assert_eq!(c.get("/").unwrap(), b"b");
        assert_eq!(c.connects, 2);
    }

    #[test]
    fn a_broken_answer_is_an_error_not_a_panic() {
        let addr = serve(vec![
            vec!["garbage\r\n\r\n"],
            vec!["HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n"],
            vec!["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
        ]);
        let mut c = KeepAlive::new(&addr);
        for _ in 0..3 {
            assert!(c.get("/").is_err());
        }
    }
}
