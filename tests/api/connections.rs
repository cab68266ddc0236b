//! Every TCP connection lives under a deadline at every stage, and one address cannot take every
//! connection slot (issue 9 item A). Raw sockets, because well-behaved clients never do this.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::helpers::{Backend, TestApp, spawn_app_with};

/// Deadlines of 1 s in these tests; a connection must be gone well within this, even on a
/// loaded test machine.
const CLOSED_WITHIN: Duration = Duration::from_secs(6);

/// Reads until the server closes the connection; `None` if it is still open after `within`.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    closed.is_ok().then_some(buf)
}

/// A raw connection to `app` from a chosen loopback address (Linux routes all of 127/8 to lo).
async fn connect_from(app: &TestApp, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    let local: SocketAddr = format!("{from}:0").parse().expect("address");
    socket.bind(local).expect("bind a loopback source address");
    socket.connect(app.addr).await.expect("connect")
}

async fn short_deadlines() -> TestApp {
    spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("server.header_read_timeout_secs", 1))
            .merge(("server.idle_timeout_secs", 1))
    })
    .await
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_first_request_deadline() {
    let app = short_deadlines().await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    let bytes = read_until_closed(&mut s, CLOSED_WITHIN).await;
    assert_eq!(bytes.as_deref(), Some(&[][..]), "closed without an answer");
}

/// Sends `head` one byte every 500 ms on a new connection and returns how long the server took
/// to close, and what it answered.
async fn trickle(app: &TestApp, head: &[u8]) -> (Duration, String) {
    trickle_on(TcpStream::connect(app.addr).await.unwrap(), head).await
}

/// [`trickle`] on a connection already open.
async fn trickle_on(mut s: TcpStream, head: &[u8]) -> (Duration, String) {
    let started = Instant::now();
    let (mut read, mut write) = s.split();
    let trickle = async {
        for byte in head {
            if write.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        std::future::pending::<()>().await
    };
    let closed = async {
        let mut buf = Vec::new();
        let _ = read.read_to_end(&mut buf).await;
        buf
    };
    let answer = tokio::select! {
        _ = trickle => unreachable!(),
        buf = closed => buf,
    };
    (
        started.elapsed(),
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

#[tokio::test]
async fn trickled_request_heads_are_cut_at_the_first_request_deadline() {
    let app = short_deadlines().await;
    // Slowloris on HTTP/1, and on the HTTP/2 preface: at this pace the 24 preface bytes that
    // protocol detection waits for alone take 12 s.
    for head in [
        &b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"[..],
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
    ] {
        let (took, answer) = trickle(&app, head).await;
        let what = String::from_utf8_lossy(&head[..3]);
        assert!(took < CLOSED_WITHIN, "{what}: closed after {took:?}");
        assert!(!answer.contains("200 OK"), "{what}: {answer}");
    }
}

/// Frame types seen in a server's HTTP/2 byte stream (RFC 9113 §4.1: 9-byte frame headers).
fn http2_frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = vec![];
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

#[tokio::test]
async fn an_http2_connection_without_streams_gets_goaway_and_is_closed() {
    let app = short_deadlines().await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    // The client preface and an empty SETTINGS frame (RFC 9113 §3.4), then nothing.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let bytes = read_until_closed(&mut s, CLOSED_WITHIN)
        .await
        .expect("closed in time");
    const GOAWAY: u8 = 0x7;
    assert!(
        http2_frame_types(&bytes).contains(&GOAWAY),
        "frames: {:?}",
        http2_frame_types(&bytes)
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_deadline() {
    let app = spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("server.header_read_timeout_secs", 30))
            .merge(("server.idle_timeout_secs", 1))
    })
    .await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let bytes = read_until_closed(&mut s, CLOSED_WITHIN)
        .await
        .expect("closed at the idle deadline, not the 30 s header deadline");
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
}

#[tokio::test]
async fn a_trickled_body_gets_408_at_the_body_deadline() {
    let app = spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("server.body_read_timeout_secs", 1))
    })
    .await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(
        b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"user",
    )
    .await
    .unwrap();
    let bytes = read_until_closed(&mut s, CLOSED_WITHIN)
        .await
        .expect("answered and closed in time");
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
}

#[tokio::test]
async fn one_address_holding_its_share_leaves_room_for_others() {
    let app = spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("server.max_tcp_connections", 8))
            .merge(("server.max_connections_per_address", 4))
            .merge(("server.header_read_timeout_secs", 30))
    })
    .await;
    // Eight silent connections from one address: four are held, four closed at once.
    let mut attacker = vec![];
    for _ in 0..8 {
        attacker.push(connect_from(&app, "127.0.0.2").await);
    }
    let mut refused = 0;
    for s in &mut attacker {
        if read_until_closed(s, Duration::from_millis(500))
            .await
            .is_some()
        {
            refused += 1;
        }
    }
    assert_eq!(refused, 4, "the address's connections beyond its share");
    // Someone else is still served while the attacker's connections stay open.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = client.get(app.url("/healthz")).send().await;
    assert_eq!(r.map(|r| r.status()).ok(), Some(reqwest::StatusCode::OK));
    assert_eq!(
        app.state.metrics.connections_refused.get(),
        4,
        "refusals are counted"
    );
}

/// Reads one HTTP/1 response (head and a `Content-Length` body) from `s`.
async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
        let n = tokio::time::timeout(CLOSED_WITHIN, s.read(&mut chunk))
            .await
            .expect("a response in time")
            .unwrap();
        if n == 0 {
            return text;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// hyper's HTTP/1 header timer ran while a keep-alive connection waited for its next request,
/// so an idle connection was closed at `header_read_timeout_secs` (10 s), not at
/// `idle_timeout_secs` (60 s) — and a proxy keeping upstream connections for less than the
/// idle deadline (as docs/operations.md advises) raced with the server's close.
#[tokio::test]
async fn an_idle_keep_alive_connection_lives_until_the_idle_deadline_not_the_header_one() {
    let app = spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("server.header_read_timeout_secs", 1))
            .merge(("server.idle_timeout_secs", 30))
    })
    .await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(request).await.unwrap();
    let first = read_response(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 200 OK"), "{first}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.write_all(request).await.unwrap();
    let second = read_response(&mut s).await;
    assert!(
        second.starts_with("HTTP/1.1 200 OK"),
        "the keep-alive connection still serves after 2.5 s idle: {second:?}"
    );
}

/// A later HTTP/1 head on a kept-alive connection is still bounded by the header deadline,
/// counted from its first byte (slowloris after a first honest request).
#[tokio::test]
async fn a_trickled_later_head_is_cut_at_the_header_deadline() {
    let app = spawn_app_with(Backend::Sqlite, |f| {
        f.merge(("server.header_read_timeout_secs", 1))
            .merge(("server.idle_timeout_secs", 30))
    })
    .await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let first = read_response(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 200 OK"), "{first}");
    let (took, answer) = trickle_on(
        s,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    )
    .await;
    assert!(
        took < CLOSED_WITHIN,
        "closed after {took:?} (idle deadline 30 s)"
    );
    assert!(!answer.contains("200 OK"), "{answer}");
}
