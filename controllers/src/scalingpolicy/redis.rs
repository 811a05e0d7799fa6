//! Queue triggers on Redis: a list's length (LLEN), a stream's (XLEN), or with a consumer
//! group what the group has yet to finish (its pending entries plus its lag, XINFO GROUPS).
//! The protocol (RESP2) is spoken directly over one short-lived TCP connection per reading —
//! four commands do not justify a client crate and its dependency tree. Every step has the
//! caller's deadline; AUTH comes from Secrets only.

use std::time::Duration;

use capstan_api::crds::scalingpolicy::RedisQueue;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A reply, as RESP2 has them.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// The longest bulk string or array accepted (a broken or hostile server cannot make the
/// controller allocate without bound).
const MAX_LEN: i64 = 1 << 20;

/// A command as RESP writes it: an array of bulk strings.
pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one reply.
pub async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<Reply, String> {
    // Arrays nest: an explicit stack instead of recursion in an async fn.
    let mut stack: Vec<(Vec<Reply>, usize)> = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| format!("reading: {e}"))?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        if line.len() < 3 || !line.ends_with(b"\r\n") {
            return Err("a malformed reply".into());
        }
        let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
        let number = || {
            text.parse::<i64>()
                .map_err(|_| format!("a malformed length {text:?}"))
        };
        let mut reply = match line[0] {
            b'+' => Reply::Simple(text.clone()),
            b'-' => Reply::Error(text.clone()),
            b':' => Reply::Integer(number()?),
            b'$' => {
                let len = number()?;
                if len < 0 {
                    Reply::Bulk(None)
                } else if len > MAX_LEN {
                    return Err(format!("a bulk string of {len} bytes"));
                } else {
                    let mut buf = vec![0; len as usize + 2];
                    r.read_exact(&mut buf)
                        .await
                        .map_err(|e| format!("reading: {e}"))?;
                    buf.truncate(len as usize);
                    Reply::Bulk(Some(buf))
                }
            }
            b'*' => {
                let len = number()?;
                if len > MAX_LEN {
                    return Err(format!("an array of {len} elements"));
                }
                if len < 0 {
                    Reply::Array(None)
                } else if len == 0 {
                    Reply::Array(Some(Vec::new()))
                } else {
                    stack.push((Vec::with_capacity(len as usize), len as usize));
                    continue;
                }
            }
            other => return Err(format!("an unknown reply type {:?}", other as char)),
        };
        // Complete the arrays this reply finishes.
        loop {
            match stack.last_mut() {
                None => return Ok(reply),
                Some((items, want)) => {
                    items.push(reply);
                    if items.len() < *want {
                        break;
                    }
                    let (items, _) = stack.pop().unwrap_or_default();
                    reply = Reply::Array(Some(items));
                }
            }
        }
    }
}

/// One connection, commands in turn.
struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    async fn call(&mut self, args: &[&str]) -> Result<Reply, String> {
        self.stream
            .get_mut()
            .write_all(&encode(args))
            .await
            .map_err(|e| format!("writing: {e}"))?;
        match read_reply(&mut self.stream).await? {
            Reply::Error(e) => Err(format!("{}: {e}", args[0])),
            r => Ok(r),
        }
    }
}

/// `host:port`, with 6379 when the port is left out.
pub fn address(a: &str) -> String {
    let has_port = match a.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        a.to_string()
    } else {
        format!("{a}:6379")
    }
}

/// How many messages wait in `q`, within `timeout`.
pub async fn queue_length(
    q: &RedisQueue,
    username: Option<&str>,
    password: Option<&str>,
    timeout: Duration,
) -> Result<i64, String> {
    let addr = address(&q.address);
    tokio::time::timeout(timeout, async {
        let stream = TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let mut c = Conn {
            stream: BufReader::new(stream),
        };
        match (username, password) {
            (Some(u), Some(p)) => c.call(&["AUTH", u, p]).await.map(|_| ())?,
            (None, Some(p)) => c.call(&["AUTH", p]).await.map(|_| ())?,
            _ => {}
        }
        if q.database != 0 {
            c.call(&["SELECT", &q.database.to_string()]).await?;
        }
        let reply = match (&q.list, &q.stream, &q.consumer_group) {
            (Some(list), _, _) => c.call(&["LLEN", list]).await?,
            (None, Some(stream), None) => c.call(&["XLEN", stream]).await?,
            (None, Some(stream), Some(group)) => {
                return group_backlog(c.call(&["XINFO", "GROUPS", stream]).await?, group);
            }
            (None, None, _) => return Err("neither a list nor a stream".to_string()),
        };
        match reply {
            Reply::Integer(n) => Ok(n),
            other => Err(format!("an unexpected reply {other:?}")),
        }
    })
    .await
    .map_err(|_| format!("no answer from {addr} within {timeout:?}"))?
}

/// What a consumer group has yet to finish: entries delivered and not acknowledged, plus
/// entries not yet delivered (`lag`, Redis 7).
fn group_backlog(reply: Reply, group: &str) -> Result<i64, String> {
    let Reply::Array(Some(groups)) = reply else {
        return Err("XINFO GROUPS: an unexpected reply".into());
    };
    for g in groups {
        let Reply::Array(Some(fields)) = g else {
            continue;
        };
        let field = |name: &str| {
            fields.chunks(2).find_map(|kv| match kv {
                [Reply::Bulk(Some(k)), v] if k.as_slice() == name.as_bytes() => Some(v.clone()),
                [Reply::Simple(k), v] if k == name => Some(v.clone()),
                _ => None,
            })
        };
        let is_group = matches!(field("name"), Some(Reply::Bulk(Some(n))) if n == group.as_bytes());
        if !is_group {
            continue;
        }
        let pending = match field("pending") {
            Some(Reply::Integer(n)) => n,
            _ => 0,
        };
        let lag = match field("lag") {
            Some(Reply::Integer(n)) => n,
            _ => 0,
        };
        return Ok(pending + lag);
    }
    Err(format!("the stream has no consumer group {group:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Reply, String> {
        read_reply(&mut BufReader::new(bytes)).await
    }

    #[tokio::test]
    async fn replies_parse_nested_and_bad_ones_are_errors_not_panics() {
        assert_eq!(parse(b":42\r\n").await, Ok(Reply::Integer(42)));
        assert_eq!(parse(b"+OK\r\n").await, Ok(Reply::Simple("OK".into())));
        assert_eq!(
            parse(b"-NOAUTH Authentication required.\r\n").await,
            Ok(Reply::Error("NOAUTH Authentication required.".into()))
        );
        assert_eq!(parse(b"$-1\r\n").await, Ok(Reply::Bulk(None)));
        assert_eq!(
            parse(b"*2\r\n*2\r\n$4\r\nname\r\n$1\r\ng\r\n:7\r\n").await,
            Ok(Reply::Array(Some(vec![
                Reply::Array(Some(vec![
                    Reply::Bulk(Some(b"name".to_vec())),
                    Reply::Bulk(Some(b"g".to_vec()))
                ])),
                Reply::Integer(7)
            ])))
        );
        for bad in [
            &b""[..],
            b":x\r\n",
            b"$5\r\nab",
            b"?1\r\n",
            b"*99999999\r\n",
            b":1\n",
        ] {
            assert!(parse(bad).await.is_err(), "{bad:?}");
        }
        assert_eq!(
            encode(&["LLEN", "jobs"]),
            b"*2\r\n$4\r\nLLEN\r\n$4\r\njobs\r\n"
        );
    }

    #[test]
    fn addresses_get_the_default_port_and_groups_their_backlog() {
        assert_eq!(address("redis.default"), "redis.default:6379");
        assert_eq!(address("10.0.0.1:7000"), "10.0.0.1:7000");
        assert_eq!(address("[::1]:7000"), "[::1]:7000");
        let bulk = |s: &str| Reply::Bulk(Some(s.as_bytes().to_vec()));
        let groups = Reply::Array(Some(vec![Reply::Array(Some(vec![
            bulk("name"),
            bulk("workers"),
            bulk("pending"),
            Reply::Integer(3),
            bulk("lag"),
            Reply::Integer(4),
        ]))]));
        assert_eq!(group_backlog(groups.clone(), "workers"), Ok(7));
        assert!(group_backlog(groups, "other").is_err());
    }
}
