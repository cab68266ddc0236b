// The signaling socket: hello/welcome, resume after a drop or a reload, sequence numbers and acks.
// Events: "welcome" (detail: welcome message), "message" (detail: any other server message),
// "state" (detail: "online" | "reconnecting" | "offline"), "revoked", "superseded".
//
// Every server message after `welcome` carries `seq` (1, 2, 3, … per connection, kept on replay).
// The resume token and the seq of the last processed message live in sessionStorage, like the
// login, so a reloaded tab resumes its connection: `hello` sends both and the server replays
// exactly the messages after `last_seq`.

const RETRY_MS = [250, 500, 1000, 2000, 4000];
const RESUME_KEY = "callsignal.resume_token";
const SEQ_KEY = "callsignal.last_seq";
// `ack` counts against the server's rate limit (20 msg/s), so at most one a second — and none
// when a message sent in that second carried the acknowledgement (`ack` field).
const ACK_EVERY_MS = 1000;
// Call messages (sdp/ice) written while the socket is down wait for the resumed connection.
const OUTBOX_MAX = 100;
// The server closes a socket whose connection another socket resumed (a duplicated tab carries
// a copy of our sessionStorage, resume token included). Reconnecting would take it back, and
// the two tabs would go on stealing it from each other.
const CLOSE_SUPERSEDED = 4001;

export class Signaling extends EventTarget {
  constructor(api) {
    super();
    this.api = api;
    this.ws = null;
    this.welcome = null;
    this.attempt = 0;
    this.stopped = true;
    this.retryTimer = null;
    this.resumeToken = sessionStorage.getItem(RESUME_KEY);
    this.lastSeq = Number(sessionStorage.getItem(SEQ_KEY)) || 0;
    this.ackedSeq = this.lastSeq;
    this.ackTimer = null;
    this.outbox = [];
  }

  start() {
    this.stopped = false;
    this.#open();
  }

  /** Closes for good. 1000 tells the server the user left: a call ends at once for the peer. */
  stop(code = 1000) {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.ackTimer);
    this.ackTimer = null;
    this.outbox = [];
    this.#forgetResume();
    if (this.ws) this.ws.close(code, "bye");
    this.ws = null;
    this.welcome = null;
    this.#state("offline");
  }

  /** Sends now; with `queue`, a message that cannot go now is sent once the connection resumes. */
  send(msg, { queue = false } = {}) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN && this.welcome) {
      // Sending anyway: the acknowledgement rides along (`ack`, an extension) instead of
      // costing a frame of its own later.
      const seq = this.lastSeq;
      const piggyback = msg.type !== "ack" && seq > this.ackedSeq;
      this.ws.send(JSON.stringify(piggyback ? { ...msg, ack: seq } : msg));
      if (piggyback) this.ackedSeq = seq;
      return true;
    }
    if (queue && !this.stopped && this.outbox.length < OUTBOX_MAX) this.outbox.push(msg);
    return false;
  }

  /** Drops the socket as a network failure would (close code 4000: the long resume grace). */
  simulateNetworkDrop() {
    if (this.ws) this.ws.close(4000, "simulated drop");
  }

  /** Closes the socket with `code` (1000 or 3000–4999; browsers refuse others); 1000 also stops. */
  closeSocket(code) {
    if (code === 1000) return this.stop(1000);
    if (this.ws) this.ws.close(code, "test");
  }

  #state(s) {
    this.dispatchEvent(new CustomEvent("state", { detail: s }));
  }

  #forgetResume() {
    this.resumeToken = null;
    this.lastSeq = 0;
    this.ackedSeq = 0;
    sessionStorage.removeItem(RESUME_KEY);
    sessionStorage.removeItem(SEQ_KEY);
  }

  #hello() {
    const hello = { type: "hello", token: this.api.access };
    if (this.resumeToken) {
      hello.resume_token = this.resumeToken;
      hello.last_seq = this.lastSeq;
      // The server frees what `last_seq` covers: it counts as an ack.
      this.ackedSeq = this.lastSeq;
    }
    return hello;
  }

  #onWelcome(msg) {
    this.welcome = msg;
    this.resumeToken = msg.resume_token;
    sessionStorage.setItem(RESUME_KEY, msg.resume_token);
    if (!msg.resumed) {
      // A new connection numbers its messages from 1 again; what we queued was for the old one.
      this.lastSeq = 0;
      this.ackedSeq = 0;
      sessionStorage.setItem(SEQ_KEY, "0");
      this.outbox = [];
    }
    this.attempt = 0;
    this.#state("online");
    for (const m of this.outbox.splice(0)) this.send(m);
    this.dispatchEvent(new CustomEvent("welcome", { detail: msg }));
  }

  /** Hands a sequenced message to the app once, then records it as processed. */
  #onSequenced(msg) {
    if (msg.seq <= this.lastSeq) return; // already processed (a replay overlapping what we saw)
    this.dispatchEvent(new CustomEvent("message", { detail: msg }));
    this.lastSeq = msg.seq;
    sessionStorage.setItem(SEQ_KEY, String(msg.seq));
    this.#scheduleAck();
  }

  #scheduleAck() {
    if (this.ackTimer) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = null;
      const seq = this.lastSeq;
      if (seq > this.ackedSeq && this.send({ type: "ack", seq })) this.ackedSeq = seq;
    }, ACK_EVERY_MS);
  }

  async #open() {
    try {
      await this.api.fresh();
    } catch {
      this.dispatchEvent(new Event("revoked"));
      return;
    }
    if (this.stopped) return;
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
    const ws = new WebSocket(url);
    this.ws = ws;
    this.welcome = null;
    ws.onopen = () => ws.send(JSON.stringify(this.#hello()));
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (msg.type === "welcome") {
        this.#onWelcome(msg);
      } else if (msg.type === "error" && !this.welcome && msg.code === "token_expired") {
        this.api.refresh().catch(() => {});
      } else if (typeof msg.seq === "number") {
        this.#onSequenced(msg);
      } else {
        // Unsequenced: handshake errors, and `resume_gap` right after a resumed welcome.
        this.dispatchEvent(new CustomEvent("message", { detail: msg }));
      }
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.welcome = null;
      if (this.stopped) return;
      if (ev.code === CLOSE_SUPERSEDED) {
        this.stopped = true;
        this.#forgetResume(); // a reload of this tab then opens a connection of its own
        this.#state("offline");
        this.dispatchEvent(new Event("superseded"));
        return;
      }
      if (ev.code === 4401) {
        // Bad or revoked credentials: try one refresh; a revoked session ends the login.
        this.api.refresh().then(() => this.#retry(), () => this.dispatchEvent(new Event("revoked")));
        return;
      }
      this.#retry();
    };
  }

  #retry() {
    this.#state("reconnecting");
    const delay = RETRY_MS[Math.min(this.attempt, RETRY_MS.length - 1)];
    this.attempt += 1;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.#open(), delay);
  }
}
