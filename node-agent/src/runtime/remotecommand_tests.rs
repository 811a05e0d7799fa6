//! The client against a streaming server made of the same SPDY framing, the way kubelet's
//! (and containerd's) remotecommand server behaves: it waits for the streams the request
//! names, answers each, and writes a Status on the error stream before it closes.

use super::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// What the server saw: stream types by id, stdin, the resizes.
#[derive(Debug, Default)]
struct Seen {
    streams: Vec<(u32, String)>,
    stdin: Vec<u8>,
    resizes: Vec<TermSize>,
    path: String,
}

/// Serves one session on a loopback port: echoes stdin to stdout (upper-cased on stderr
/// too) until stdin ends, then writes `status` and closes.
async fn server(status: &'static str) -> (String, tokio::task::JoinHandle<Seen>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/attach/tok123", l.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut s = BufReader::new(s);
        let mut seen = Seen::default();
        let mut line = String::new();
        s.read_line(&mut line).await.unwrap();
        seen.path = line.split(' ').nth(1).unwrap().to_string();
        let mut upgrade = String::new();
        loop {
            line.clear();
            s.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            upgrade.push_str(&line.to_ascii_lowercase());
        }
        assert!(upgrade.contains("upgrade: spdy/3.1"), "{upgrade}");
        assert!(upgrade.contains("x-stream-protocol-version: v4.channel.k8s.io"));
        let mut s = s.into_inner();
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n").await.unwrap();
        let (rd, mut wr) = s.into_split();
        let mut rd = spdy::Reader::new(rd);
        let mut enc = spdy::Writer::new().unwrap();
        let mut send = async |f: Frame, wr: &mut tokio::net::tcp::OwnedWriteHalf| {
            let mut b = Vec::new();
            enc.encode(&f, &mut b).unwrap();
            // The client may have left (a detach).
            let _ = wr.write_all(&b).await;
        };
        let id = |seen: &Seen, name: &str| {
            seen.streams
                .iter()
                .find(|(_, n)| n == name)
                .map(|(i, _)| *i)
        };
        while let Ok(Some(f)) = rd.next().await {
            match f {
                Frame::SynStream {
                    stream, headers, ..
                } => {
                    let kind = headers
                        .iter()
                        .find(|(k, _)| k == "streamtype")
                        .unwrap()
                        .1
                        .clone();
                    seen.streams.push((stream, kind));
                    send(
                        Frame::SynReply {
                            stream,
                            headers: vec![],
                        },
                        &mut wr,
                    )
                    .await;
                }
                Frame::Data { stream, fin, data } => {
                    let kind = seen
                        .streams
                        .iter()
                        .find(|(i, _)| *i == stream)
                        .unwrap()
                        .1
                        .clone();
                    match kind.as_str() {
                        "stdin" => {
                            seen.stdin.extend_from_slice(&data);
                            if let Some(out) = id(&seen, "stdout")
                                && !data.is_empty()
                            {
                                send(
                                    Frame::Data {
                                        stream: out,
                                        fin: false,
                                        data: data.clone(),
                                    },
                                    &mut wr,
                                )
                                .await;
                            }
                            if let Some(err) = id(&seen, "stderr")
                                && !data.is_empty()
                            {
                                let up = Bytes::from(data.to_ascii_uppercase());
                                send(
                                    Frame::Data {
                                        stream: err,
                                        fin: false,
                                        data: up,
                                    },
                                    &mut wr,
                                )
                                .await;
                            }
                            if fin {
                                break;
                            }
                        }
                        "resize" => {
                            seen.resizes.extend(sizes(&data));
                            let out = id(&seen, "stdout").unwrap();
                            let msg = format!(
                                "{}x{}",
                                seen.resizes.last().unwrap().width,
                                seen.resizes.last().unwrap().height
                            );
                            send(
                                Frame::Data {
                                    stream: out,
                                    fin: false,
                                    data: msg.into(),
                                },
                                &mut wr,
                            )
                            .await;
                        }
                        _ => {}
                    }
                }
                Frame::Ping(n) => send(Frame::Ping(n), &mut wr).await,
                _ => {}
            }
        }
        for name in ["stdout", "stderr"] {
            if let Some(i) = id(&seen, name) {
                send(
                    Frame::Data {
                        stream: i,
                        fin: true,
                        data: Bytes::new(),
                    },
                    &mut wr,
                )
                .await;
            }
        }
        let err = id(&seen, "error").unwrap();
        send(
            Frame::Data {
                stream: err,
                fin: true,
                data: status.into(),
            },
            &mut wr,
        )
        .await;
        let _ = wr.shutdown().await;
        seen
    });
    (url, task)
}

fn request(stdin: bool, tty: bool) -> ExecRequest {
    ExecRequest {
        command: vec![],
        stdin,
        stdout: true,
        stderr: true,
        tty,
    }
}

async fn collect(rx: &mut Option<mpsc::Receiver<Bytes>>) -> Vec<u8> {
    let mut got = Vec::new();
    if let Some(rx) = rx {
        while let Some(b) = rx.recv().await {
            got.extend_from_slice(&b);
        }
    }
    got
}

#[tokio::test]
async fn input_flows_through_named_streams_and_its_end_closes_the_session() {
    let (url, server) = server(r#"{"metadata":{},"status":"Success"}"#).await;
    let mut s = dial(&url, &request(true, false)).await.unwrap();
    let tx = s.stdin.take().unwrap();
    tx.send("hello ".into()).await.unwrap();
    tx.send("world".into()).await.unwrap();
    drop(tx);
    let (out, err) = tokio::join!(collect(&mut s.stdout), collect(&mut s.stderr));
    assert_eq!(out, b"hello world");
    assert_eq!(err, b"HELLO WORLD");
    assert_eq!(s.exit.await.unwrap(), Ok(0));
    let seen = server.await.unwrap();
    assert_eq!(seen.path, "/attach/tok123");
    let kinds: Vec<_> = seen.streams.iter().map(|(i, k)| (*i, k.as_str())).collect();
    assert_eq!(
        kinds,
        [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr")]
    );
    assert_eq!(seen.stdin, b"hello world");
}

#[tokio::test]
async fn a_terminal_has_a_resize_stream_and_no_stderr() {
    let (url, server) = server(r#"{"metadata":{},"status":"Success"}"#).await;
    let mut s = dial(&url, &request(true, true)).await.unwrap();
    assert!(s.stderr.is_none());
    s.resize
        .send(TermSize {
            width: 132,
            height: 43,
        })
        .await
        .unwrap();
    let mut out = s.stdout.take().unwrap();
    assert_eq!(&out.recv().await.unwrap()[..], b"132x43");
    // The end of a terminal's input is not passed on (the server ends on stdin's FIN)...
    drop(s.stdin.take());
    let quiet = tokio::time::timeout(Duration::from_millis(300), out.recv()).await;
    assert!(quiet.is_err(), "the session goes on");
    // ...until the client leaves.
    drop(s);
    assert!(out.recv().await.is_none());
    let seen = server.await.unwrap();
    assert_eq!(
        seen.resizes,
        [TermSize {
            width: 132,
            height: 43
        }]
    );
    let kinds: Vec<_> = seen.streams.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(kinds, ["error", "stdin", "stdout", "resize"]);
}

#[tokio::test]
async fn the_status_on_the_error_stream_is_the_exit() {
    let failure = r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
    let (url, server) = server(failure).await;
    let mut s = dial(&url, &request(true, false)).await.unwrap();
    drop(s.stdin.take());
    assert_eq!(s.exit.await.unwrap(), Ok(3));
    server.await.unwrap();
    assert_eq!(outcome(b""), Ok(0));
    assert_eq!(
        outcome(br#"{"status":"Failure","message":"container not found"}"#),
        Err("container not found".into())
    );
    assert_eq!(outcome(b"garbage"), Err("garbage".into()));
}

#[tokio::test]
async fn a_refused_upgrade_is_an_error_with_the_servers_words() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/attach/x", l.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 15\r\n\r\nunknown token\r\n")
            .await
            .unwrap();
    });
    let e = dial(&url, &request(false, false))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("404") && e.contains("unknown token"), "{e}");
}

#[tokio::test]
async fn a_session_dropped_ends_the_connection() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/attach/x", l.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n",
        )
        .await
        .unwrap();
        let mut rd = spdy::Reader::new(s);
        let mut frames = 0;
        // Until the client says goodbye or hangs up.
        while let Ok(Some(f)) = rd.next().await {
            frames += 1;
            if f == Frame::GoAway {
                break;
            }
        }
        frames
    });
    let s = dial(&url, &request(false, false)).await.unwrap();
    drop(s);
    let frames = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the connection ends")
        .unwrap();
    assert!(frames >= 2, "the streams were opened, then the goodbye");
}
