//! The bare relay: the least a WebSocket signaling relay can do on tokio-tungstenite 0.30, as
//! the reference ("the limit on this machine") that every relay, flood and idle figure of the
//! load generator is compared with.
//!
//! * A client connects to `ws://ADDR/<id>/<peer>`: the path says who it is and to whom its frames
//!   go. There is no authentication, no JSON parsing, no sequence numbers, no persistence.
//! * A map `id → sender` (one unbounded channel per connection) holds the connected clients.
//! * Every text frame a client sends is forwarded, untouched (the same `Utf8Bytes`, no copy), to
//!   its peer's channel; frames for a peer that is not connected are dropped.
//! * Each connection is one task: it reads its socket and drains its channel. Everything queued
//!   in the channel when it wakes is written with `feed` and then sent with **one flush** (one
//!   `write` syscall per batch, not per frame).
//! * The same small read buffer as callsignal's sockets (1 KiB), so idle memory compares like
//!   for like; mimalloc is the allocator (the load generator's binary, which this runs in, sets
//!   it, as callsignal does), and transparent huge pages are off, as callsignal turns them off
//!   for itself (the load generator's `main` does it for its whole binary).
//!
//! Run standalone with `cargo bench -p loadgen -- bare-relay 127.0.0.1:9000`; the load
//! generator starts it as a child process of its own binary (pinned to core 0 with `--pin`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Peers = Arc<Mutex<HashMap<Box<str>, mpsc::UnboundedSender<Utf8Bytes>>>>;

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024))
}

/// Runs the relay on `bind` until the process is killed. Prints `bare relay listening on ADDR`.
pub(crate) fn main(bind: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listener = TcpListener::bind(bind).await.expect("bind");
        println!(
            "bare relay listening on {}",
            listener.local_addr().expect("addr")
        );
        let peers: Peers = Arc::default();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(stream, peers.clone()));
        }
    });
}

// The handshake callback's error type is tungstenite's (an HTTP response), not ours to shrink.
#[allow(clippy::result_large_err)]
async fn serve(stream: TcpStream, peers: Peers) {
    let mut path = String::new();
    let callback = |req: &Request, resp: Response| {
        path = req.uri().path().to_owned();
        Ok(resp)
    };
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config())).await
    else {
        return;
    };
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (Some(id), Some(peer)) = (parts.next(), parts.next()) else {
        return;
    };
    let (id, peer): (Box<str>, Box<str>) = (id.into(), peer.into());
    let (tx, mut rx) = mpsc::unbounded_channel::<Utf8Bytes>();
    peers.lock().expect("peers").insert(id.clone(), tx.clone());
    let (mut sink, mut stream) = ws.split();
    // The peer's sender, looked up once it is needed and kept while it works.
    let mut to_peer: Option<mpsc::UnboundedSender<Utf8Bytes>> = None;
    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if to_peer.as_ref().is_none_or(mpsc::UnboundedSender::is_closed) {
                        to_peer = peers.lock().expect("peers").get(&peer).cloned();
                    }
                    if let Some(p) = &to_peer {
                        let _ = p.send(text);
                    }
                }
                Some(Ok(_)) => {} // pings are answered by tungstenite; nothing else is relayed
                _ => break,
            },
            Some(first) = rx.recv() => {
                let mut ok = sink.feed(Message::Text(first)).await.is_ok();
                while ok && let Ok(next) = rx.try_recv() {
                    ok = sink.feed(Message::Text(next)).await.is_ok();
                }
                if !ok || sink.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    let mut map = peers.lock().expect("peers");
    if map.get(&id).is_some_and(|t| t.same_channel(&tx)) {
        map.remove(&id);
    }
}
