//! Container logs as `kubectl logs` gets them: the CRI log files
//! (`<RFC3339Nano> <stdout|stderr> <F|P> <msg>` lines, P being part of a longer line) turned
//! back into the container's output, with kubelet's options — tailLines, sinceSeconds /
//! sinceTime, timestamps, limitBytes and follow.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

/// kubelet's PodLogOptions, the part that applies to a file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    pub follow: bool,
    pub tail_lines: Option<usize>,
    pub since: Option<jiff::Timestamp>,
    pub timestamps: bool,
    pub limit_bytes: Option<usize>,
}

/// One record of a CRI log file.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub msg: &'a [u8],
}

/// Parses one line (without its newline); None for a malformed one.
pub fn parse(line: &[u8]) -> Option<Record<'_>> {
    let mut it = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(it.next()?).ok()?;
    let stream = std::str::from_utf8(it.next()?).ok()?;
    let tag = it.next()?;
    let msg = it.next().unwrap_or_default();
    if !matches!(stream, "stdout" | "stderr") {
        return None;
    }
    Some(Record {
        time,
        stream,
        partial: tag.first() == Some(&b'P'),
        msg,
    })
}

/// Renders complete lines of a CRI log (`data`), applying `since` and `timestamps`; a
/// partial record joins the next one (one output line). Returns the output lines, each with
/// its newline.
pub fn render(data: &[u8], opts: &Options) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut pending: Option<Vec<u8>> = None;
    for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Some(r) = parse(line) else { continue };
        if let Some(since) = opts.since
            && r.time.parse::<jiff::Timestamp>().is_ok_and(|t| t < since)
        {
            continue;
        }
        let buf = pending.get_or_insert_with(|| {
            let mut b = Vec::new();
            if opts.timestamps {
                b.extend_from_slice(r.time.as_bytes());
                b.push(b' ');
            }
            b
        });
        buf.extend_from_slice(r.msg);
        if !r.partial {
            let mut b = pending.take().unwrap_or_default();
            b.push(b'\n');
            out.push(b);
        }
    }
    out
}

/// The output for a finished read: lines rendered, the last `tail_lines` kept, `limit_bytes`
/// applied.
pub fn select(data: &[u8], opts: &Options) -> Vec<u8> {
    let mut lines = render(data, opts);
    if let Some(n) = opts.tail_lines {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let mut out: Vec<u8> = lines.concat();
    if let Some(limit) = opts.limit_bytes {
        out.truncate(limit);
    }
    out
}

/// Streams a log file: what is there (selected by `opts`), then, with `follow`, what is
/// appended until `running()` says the container stopped and the file has been read to its
/// end.
pub fn stream<F, Fut>(
    path: PathBuf,
    opts: Options,
    running: F,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    struct St<F> {
        path: PathBuf,
        opts: Options,
        running: F,
        offset: u64,
        first: bool,
        sent: usize,
        idle: u32,
        done: bool,
    }
    let st = St {
        path,
        opts,
        running,
        offset: 0,
        first: true,
        sent: 0,
        idle: 0,
        done: false,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            let data = match read_from(&st.path, st.offset).await {
                Ok(d) => d,
                Err(e) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
            };
            // Only whole lines; a line still being written waits for its newline.
            let end = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let chunk = &data[..end];
            st.offset += end as u64;
            let mut out = if st.first {
                st.first = false;
                select(chunk, &st.opts)
            } else {
                let o = Options {
                    tail_lines: None,
                    ..st.opts.clone()
                };
                render(chunk, &o).concat()
            };
            if let Some(limit) = st.opts.limit_bytes {
                out.truncate(limit.saturating_sub(st.sent));
                if st.sent + out.len() >= limit {
                    st.done = true;
                }
            }
            if !st.opts.follow {
                st.done = true;
            }
            if !out.is_empty() {
                st.sent += out.len();
                st.idle = 0;
                return Some((Ok(Bytes::from(out)), st));
            }
            if st.done {
                return None;
            }
            // Nothing new: is the container still there to write more?
            st.idle += 1;
            if st.idle % 5 == 0 && !(st.running)().await {
                // One last read, then stop.
                let rest = read_from(&st.path, st.offset).await.unwrap_or_default();
                st.done = true;
                let o = Options {
                    tail_lines: None,
                    ..st.opts.clone()
                };
                let out = render(&rest, &o).concat();
                if out.is_empty() {
                    return None;
                }
                return Some((Ok(Bytes::from(out)), st));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn read_from(path: &std::path::Path, offset: u64) -> Result<Vec<u8>, std::io::Error> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    f.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &[u8] = b"2026-11-24T10:00:00.000000001Z stdout F one\n\
2026-11-24T10:00:01.000000000Z stderr F two\n\
2026-11-24T10:00:02.000000000Z stdout P thr\n\
2026-11-24T10:00:02.000000100Z stdout F ee\n\
garbage line\n\
2026-11-24T10:00:03.000000000Z stdout F four\n";

    #[test]
    fn records_become_lines_with_tail_since_timestamps_and_limits() {
        let all = Options::default();
        assert_eq!(select(LOG, &all), b"one\ntwo\nthree\nfour\n");
        let tail = Options {
            tail_lines: Some(2),
            ..Default::default()
        };
        assert_eq!(select(LOG, &tail), b"three\nfour\n");
        let since = Options {
            since: Some("2026-11-24T10:00:01Z".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(select(LOG, &since), b"two\nthree\nfour\n");
        let ts = Options {
            timestamps: true,
            tail_lines: Some(1),
            ..Default::default()
        };
        assert_eq!(select(LOG, &ts), b"2026-11-24T10:00:03.000000000Z four\n");
        let limit = Options {
            limit_bytes: Some(6),
            ..Default::default()
        };
        assert_eq!(select(LOG, &limit), b"one\ntw");
        assert_eq!(select(b"", &all), b"");
    }

    #[tokio::test]
    async fn follow_streams_appended_lines_until_the_container_stops() {
        use futures_util::StreamExt;
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, b"2026-11-24T10:00:00Z stdout F first\n").unwrap();
        let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let r = running.clone();
        let opts = Options {
            follow: true,
            ..Default::default()
        };
        let mut s = Box::pin(stream(path.clone(), opts, move || {
            let r = r.clone();
            async move { r.load(std::sync::atomic::Ordering::SeqCst) }
        }));
        assert_eq!(s.next().await.unwrap().unwrap(), "first\n");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"2026-11-24T10:00:01Z stdout F second\n")
            .unwrap();
        assert_eq!(s.next().await.unwrap().unwrap(), "second\n");
        f.write_all(b"2026-11-24T10:00:02Z stdout F last\n")
            .unwrap();
        running.store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(s.next().await.unwrap().unwrap(), "last\n");
        assert!(
            s.next().await.is_none(),
            "the stream ends once the container stopped"
        );
    }
}
