// The signaling socket: hello/welcome, automatic resume after a drop, typed events.
// Events: "welcome" (detail: welcome message), "message" (detail: any other server message),
// "state" (detail: "online" | "reconnecting" | "offline"), "revoked".

const RETRY_MS = [250, 500, 1000, 2000, 4000];

export class Signaling extends EventTarget {
  constructor(api) {
    super();
    this.api = api;
    this.ws = null;
    this.resumeToken = null;
    this.welcome = null;
    this.attempt = 0;
    this.stopped = true;
    this.retryTimer = null;
  }

  start() {
    this.stopped = false;
    this.#open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.resumeToken = null;
    if (this.ws) this.ws.close(1000, "bye");
    this.ws = null;
    this.#state("offline");
  }

  send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN && this.welcome) {
      this.ws.send(JSON.stringify(msg));
      return true;
    }
    return false;
  }

  /** Drops the socket as a network failure would (used by tests and the "reconnect" path). */
  simulateNetworkDrop() {
    if (this.ws) this.ws.close(4000, "simulated drop");
  }

  #state(s) {
    this.dispatchEvent(new CustomEvent("state", { detail: s }));
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
    ws.onopen = () => {
      const hello = { type: "hello", token: this.api.access };
      if (this.resumeToken) hello.resume_token = this.resumeToken;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (msg.type === "welcome") {
        this.welcome = msg;
        this.resumeToken = msg.resume_token;
        this.attempt = 0;
        this.#state("online");
        this.dispatchEvent(new CustomEvent("welcome", { detail: msg }));
      } else if (msg.type === "error" && !this.welcome && msg.code === "token_expired") {
        this.api.refresh().catch(() => {});
      } else {
        this.dispatchEvent(new CustomEvent("message", { detail: msg }));
      }
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.welcome = null;
      if (this.stopped) return;
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
