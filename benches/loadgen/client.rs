//! Clients: users over REST, callsignal signaling sockets (hello/welcome, sequence numbers
//! checked on every message), bare-relay sockets, and the frames the load generator sends.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub(crate) type Sink = Arc<Mutex<SplitSink<Ws, Message>>>;
pub(crate) type Stream = SplitStream<Ws>;

pub(crate) const PASSWORD: &str = "load generator password";

/// Small client buffers: the idle scenario holds 15,000 sockets in the load generator.
fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}

/// Opens a WebSocket (TCP_NODELAY, as a browser's).
pub(crate) async fn open(url: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config()), true)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    ws
}

/// Registers and logs in `names` (at most `parallel` at once; each costs two argon2 hashes on
/// the server) and returns their access tokens in order.
pub(crate) async fn users(addr: &str, names: Vec<String>, parallel: usize) -> Vec<String> {
    let http = reqwest::Client::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = vec![];
    for name in names {
        let (http, addr, gate) = (http.clone(), addr.to_owned(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("gate");
            user(&http, &addr, &name).await
        }));
    }
    let mut out = vec![];
    for t in tasks {
        out.push(t.await.expect("user task"));
    }
    out
}

async fn user(http: &reqwest::Client, addr: &str, name: &str) -> String {
    let r = http
        .post(format!("http://{addr}/api/auth/register"))
        .json(&json!({"username": name, "password": PASSWORD}))
        .send()
        .await
        .expect("register");
    assert!(r.status().is_success(), "register {name}: {}", r.status());
    login(http, addr, name).await
}

pub(crate) async fn login(http: &reqwest::Client, addr: &str, name: &str) -> String {
    let r = http
        .post(format!("http://{addr}/api/auth/login"))
        .json(&json!({"username": name, "password": PASSWORD}))
        .send()
        .await
        .expect("login");
    assert!(r.status().is_success(), "login {name}: {}", r.status());
    let v: Value = r.json().await.expect("json");
    v["access_token"].as_str().expect("token").to_owned()
}

/// A callsignal signaling connection during setup, before it is split for a measured phase.
/// Every message after `welcome` must carry the next `seq` (docs/protocol.md).
pub(crate) struct Conn {
    pub(crate) ws: Ws,
    pub(crate) last_seq: u64,
}

impl Conn {
    /// Connects to `/ws` and says hello; returns after `welcome`.
    pub(crate) async fn hello(addr: &str, token: &str) -> Conn {
        let ws = open(&format!("ws://{addr}/ws")).await;
        let mut c = Conn { ws, last_seq: 0 };
        c.send(json!({"type": "hello", "token": token})).await;
        let w = c.recv().await;
        assert_eq!(w["type"], "welcome", "{w}");
        c
    }

    pub(crate) async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    /// The next text message as JSON (30 s at most), its `seq` checked.
    pub(crate) async fn recv(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("a message within 30 s");
            match frame {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("json");
                    if let Some(seq) = v["seq"].as_u64() {
                        assert_eq!(seq, self.last_seq + 1, "seq out of order: {v}");
                        self.last_seq = seq;
                    } else {
                        assert!(
                            v["type"] == "welcome" || v["type"] == "error",
                            "a message without seq: {v}"
                        );
                    }
                    return v;
                }
                Some(Ok(_)) => continue,
                other => panic!("socket ended: {other:?}"),
            }
        }
    }

    pub(crate) async fn expect(&mut self, kind: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], kind, "{v}");
        v
    }

    pub(crate) fn split(self) -> (Sink, Stream, u64) {
        let (sink, stream) = self.ws.split();
        (Arc::new(Mutex::new(sink)), stream, self.last_seq)
    }
}

/// `a` invites `b_name`, whose connection `b` accepts. Returns the call id and the ids of the
/// invites that ended `unavailable` before it: those are retried every 50 ms for 10 s, because in
/// a cluster the callee's connection on another node becomes visible to the caller's node a
/// moment after its `welcome` (each such invite is a call, ended, in the database).
pub(crate) async fn set_up_call(a: &mut Conn, b: &mut Conn, b_name: &str) -> (String, Vec<String>) {
    let mut unavailable = vec![];
    for _ in 0..200 {
        match try_set_up_call(a, b, b_name).await {
            Ok(call_id) => return (call_id, unavailable),
            Err(Refused::Unavailable(id)) => {
                unavailable.push(id);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(Refused::PersistenceUnavailable) => {
                panic!("invite refused: persistence_unavailable")
            }
        }
    }
    panic!("{b_name} still unavailable after 10 s")
}

/// Why [`try_set_up_call`] made no call.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `error persistence_unavailable`: the server's call-event buffer is full (the database
    /// is behind).
    PersistenceUnavailable,
    /// `call.ended unavailable`: the callee has no connection the caller's node knows of (the
    /// id of the call that ended so).
    Unavailable(String),
}

/// [`set_up_call`] once: the call id, or why the invite was refused.
pub(crate) async fn try_set_up_call(
    a: &mut Conn,
    b: &mut Conn,
    b_name: &str,
) -> Result<String, Refused> {
    a.send(json!({"type": "call.invite", "to": b_name})).await;
    let created = a.recv().await;
    if created["type"] == "error" && created["code"] == "persistence_unavailable" {
        return Err(Refused::PersistenceUnavailable);
    }
    assert_eq!(created["type"], "call.created", "{created}");
    let call_id = created["call_id"].as_str().expect("call_id").to_owned();
    // `call.ringing` once a callee device was told (so `b` has its `call.incoming`), or the
    // call ends `unavailable` at once.
    let ringing = a.recv().await;
    if ringing["type"] == "call.ended" && ringing["reason"] == "unavailable" {
        return Err(Refused::Unavailable(call_id));
    }
    assert_eq!(ringing["type"], "call.ringing", "{ringing}");
    let incoming = b.expect("call.incoming").await;
    assert_eq!(incoming["call_id"], call_id.as_str());
    b.send(json!({"type": "call.accept", "call_id": call_id}))
        .await;
    b.expect("call.accepted").await;
    a.expect("call.accepted").await;
    Ok(call_id)
}

/// The first unsigned integer right after `marker` in `text`.
pub(crate) fn num_after(text: &str, marker: &str) -> Option<u64> {
    let at = text.find(marker)? + marker.len();
    let digits = text[at..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .map(|b| u64::from(b - b'0'))
        .collect::<Vec<_>>();
    if digits.is_empty() {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + d))
}

/// The frames of one call, as prefix + message number + suffix, so that building one is two
/// copies. The message number `k` rides where a real client has a number of its own: the
/// session id of the SDP's `o=` line, the foundation of a candidate. Both servers relay it
/// untouched; the receiver reads it back with [`frame_number`].
pub(crate) struct Frames {
    offer: (String, String),
    answer: (String, String),
    /// The caller's candidates, and the callee's.
    ice: (String, String),
    ice_back: (String, String),
}

/// A realistic audio-only offer from a browser: about 3 KB.
fn sdp(kind: &str) -> String {
    let setup = if kind == "offer" { "actpass" } else { "active" };
    let mut s = String::new();
    for line in [
        "v=0",
        "o=- @K@ 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS 3c1d2e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:EsAw",
        "a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y",
        "a=ice-options:trickle",
        "a=fingerprint:sha-256 A3:4F:7B:2C:91:DE:05:6A:88:1F:C2:3B:9E:47:D0:65:12:AB:CD:EF:34:56:78:9A:BC:DE:F0:12:34:56:78:9A",
        &format!("a=setup:{setup}"),
        "a=mid:0",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=sendrecv",
        "a=msid:3c1d2e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f 9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a",
        "a=rtcp-mux",
        "a=rtcp-rsize",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        "a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1;stereo=0;sprop-stereo=0",
        "a=rtpmap:63 red/48000/2",
        "a=fmtp:63 111/111",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:13 CN/8000",
        "a=rtpmap:110 telephone-event/48000",
        "a=rtpmap:126 telephone-event/8000",
        "a=ssrc:3735928559 cname:Yq7rK3vX9pL2mN8w",
        "a=ssrc:3735928559 msid:3c1d2e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f 9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a",
    ] {
        s.push_str(line);
        s.push_str("\r\n");
    }
    // Host, srflx and relay candidates gathered before the offer was sent (non-trickle
    // browsers put them in the SDP): brings it to the ~3 KB of a real audio offer.
    for i in 0..11 {
        s.push_str(&format!(
            "a=candidate:{} 1 udp {} 198.51.100.{} {} typ srflx raddr 10.0.0.{} rport {} generation 0 network-id 1 network-cost 10\r\n",
            1_467_250_027 + i,
            1_686_052_607 - i,
            10 + i,
            50_000 + i,
            20 + i,
            50_000 + i
        ));
    }
    s.push_str("a=end-of-candidates\r\n");
    s
}

/// An `RTCIceCandidateInit` numbered `@K@`.
fn candidate() -> Value {
    json!({
        "candidate": "candidate:@K@ 1 udp 2122260223 192.0.2.1 54321 typ host generation 0 ufrag EsAw network-id 1",
        "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "EsAw"})
}

fn split_at_k(frame: &str) -> (String, String) {
    let (a, b) = frame.split_once("@K@").expect("placeholder");
    (a.to_owned(), b.to_owned())
}

impl Frames {
    pub(crate) fn new(call_id: &str) -> Frames {
        let desc = |kind: &str| {
            split_at_k(
                &json!({"type": "sdp", "call_id": call_id, "description": {"type": kind, "sdp": sdp(kind)}})
                    .to_string(),
            )
        };
        let ice = split_at_k(
            &json!({"type": "ice", "call_id": call_id, "candidate": candidate()}).to_string(),
        );
        Frames {
            offer: desc("offer"),
            answer: desc("answer"),
            ice_back: ice.clone(),
            ice,
        }
    }

    /// The same messages in PeerJS's protocol (as the PeerJS client library sends them) between
    /// the peers `a` and `b`.
    pub(crate) fn peerjs(call_id: &str, a: &str, b: &str) -> Frames {
        let connection = format!("mc_{call_id}");
        let desc = |kind: &str, dst: &str| {
            split_at_k(
                &json!({"type": kind.to_uppercase(), "dst": dst, "payload": {
                    "sdp": {"type": kind, "sdp": sdp(kind)}, "type": "media",
                    "connectionId": connection, "browser": "chrome"}})
                .to_string(),
            )
        };
        let ice = |dst: &str| {
            split_at_k(
                &json!({"type": "CANDIDATE", "dst": dst, "payload": {
                    "candidate": candidate(), "type": "media", "connectionId": connection}})
                .to_string(),
            )
        };
        Frames {
            offer: desc("offer", b),
            answer: desc("answer", a),
            ice: ice(b),
            ice_back: ice(a),
        }
    }

    /// Message `k` of the call's relay schedule: 0 the caller's offer, 1 the callee's answer,
    /// then candidates (caller's at even `k`, callee's at odd).
    pub(crate) fn scheduled(&self, k: u64) -> String {
        let (a, b) = match k {
            0 => &self.offer,
            1 => &self.answer,
            _ if k.is_multiple_of(2) => &self.ice,
            _ => &self.ice_back,
        };
        let mut s = String::with_capacity(a.len() + b.len() + 20);
        s.push_str(a);
        s.push_str(&k.to_string());
        s.push_str(b);
        s
    }

    /// A candidate-sized frame numbered `k`.
    pub(crate) fn ice(&self, k: u64) -> String {
        let mut s = String::with_capacity(self.ice.0.len() + self.ice.1.len() + 20);
        s.push_str(&self.ice.0);
        s.push_str(&k.to_string());
        s.push_str(&self.ice.1);
        s
    }

    /// Bytes of the offer frame (for the report).
    pub(crate) fn offer_len(&self) -> usize {
        self.offer.0.len() + self.offer.1.len() + 1
    }

    pub(crate) fn ice_len(&self) -> usize {
        self.ice.0.len() + self.ice.1.len() + 2
    }
}

/// The message number of a relayed frame built by [`Frames`].
pub(crate) fn frame_number(text: &str) -> Option<u64> {
    num_after(text, "\"candidate:").or_else(|| num_after(text, "o=- "))
}
