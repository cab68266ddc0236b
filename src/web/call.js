// One WebRTC audio call: RTCPeerConnection, offer/answer, trickle ICE in both directions,
// renegotiation mid-call, recovery, mute, microphone switching, level meters and the
// verification code.
// Events: "status" (detail: {pc, ice, phase}), "code" (detail: {code, previous, why}),
// "levels" (detail: {local, remote} in 0..1).
//
// Negotiation follows MDN's "perfect negotiation": either side may offer at any time (ICE
// restarts); on crossed offers the polite side (the callee) rolls its own back and answers, the
// impolite side (the caller) ignores the other's. Two rules of our own on top:
// * A description whose DTLS fingerprint differs from the current remote one comes from a new
//   RTCPeerConnection on the other side (it reloaded or rebuilt its own). Chrome may refuse a
//   changed fingerprint on an existing connection, so we replace ours with a fresh one.
// * A page that rejoins a call after a reload has lost its connection: it always offers first,
//   from a fresh one, and ignores sdp/ice meant for the connection it lost (see `rejoin`).

import { fingerprints, verificationCode } from "./verify.js";

/** Recovery attempts (ICE restarts, fresh connections) before we give up until something changes. */
const MAX_RESTARTS = 3;
/** Chrome marks a lost path "disconnected" within seconds but "failed" only much later. */
const DISCONNECTED_RESTART_MS = 4000;
/** An offer unanswered this long was lost or ignored in crossed offers: offer again. */
const OFFER_TIMEOUT_MS = 5000;
/** A connection that has not connected this long after negotiating is treated as failed. */
const CONNECT_TIMEOUT_MS = 15000;
/** A peer whose socket is back after a reload sends its fresh offer within this; else we restart. */
const PEER_BACK_GRACE_MS = 3000;

let simulatedMicFailure = null;

/** Makes the next microphone requests fail with a DOMException named `name` (tests); null undoes. */
export function simulateMicrophoneFailure(name) {
  simulatedMicFailure = name || null;
}

/** The microphone (`deviceId`: a chosen one), asked for before a call is placed or answered. */
export async function getMicrophone(deviceId = null) {
  if (simulatedMicFailure) throw new DOMException("simulated microphone failure", simulatedMicFailure);
  if (!navigator.mediaDevices) throw new DOMException("no media devices in this context", "NotSupportedError");
  const audio = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
  if (deviceId) audio.deviceId = { exact: deviceId };
  return navigator.mediaDevices.getUserMedia({ audio, video: false });
}

/** The microphones the browser offers: [{deviceId, label}] (labels only once one was granted). */
export async function listMicrophones() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return [];
  const all = await navigator.mediaDevices.enumerateDevices();
  return all.filter((d) => d.kind === "audioinput").map((d) => ({ deviceId: d.deviceId, label: d.label }));
}

/** The wire `cause` for a failed microphone request. */
export function microphoneCause(error) {
  return error && error.name === "NotAllowedError" ? "microphone_denied" : "microphone_unavailable";
}

export class CallSession extends EventTarget {
  /**
   * `polite`: yields on crossed offers. `localStream`: the microphone, already granted.
   * `rejoin`: {staleFingerprint} when this page lost its connection (a reload) and rejoins.
   */
  constructor({ signaling, callId, iceServers, polite, audioElement, localStream, rejoin = null }) {
    super();
    this.signaling = signaling;
    this.callId = callId;
    this.iceServers = iceServers || [];
    this.polite = polite;
    this.audio = audioElement;
    this.local = localStream;
    this.pc = null;
    this.why = null; // why the current connection was made: first | rejoin | self | peer
    this.code = null;
    this.canOffer = false;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.restarts = 0;
    this.offerRetries = 0;
    this.offers = 0; // offers sent: the watchdog renews only the latest, if still unanswered
    this.peerAway = false;
    // Until our first offer leaves, a rejoining page ignores sdp/ice: they were meant for the
    // connection the reload destroyed (the server replays what it queued for it).
    this.awaitingOwnOffer = Boolean(rejoin);
    this.staleFingerprint = rejoin ? rejoin.staleFingerprint || null : null;
    this.timers = {};
    this.muted = false;
    this.ctx = null;
    this.meterTimer = null;
    this.closed = false;
    this.queue = Promise.resolve(); // remote sdp/ice are applied one at a time, in order
  }

  /** Starts the connection. `offer`: this side makes the first offer (the caller, or a rejoin). */
  start({ offer }) {
    this.#newPc({ offer, why: this.awaitingOwnOffer ? "rejoin" : "first" });
    this.#meter("local", this.local);
    this.#startMeters();
  }

  onSdp(description) {
    if (this.#stale(description.sdp)) return;
    this.#enqueue(() => this.#onDescription(description));
  }

  onIce(candidate) {
    if (this.awaitingOwnOffer) return;
    this.#enqueue(() => this.#onCandidate(candidate));
  }

  /** Our socket or the peer's came back, or messages were lost: make sure media flows again. */
  resync() {
    if (this.awaitingOwnOffer) return; // our fresh offer is on its way
    this.restarts = 0;
    this.offerRetries = 0;
    const s = this.pc ? this.pc.connectionState : "closed";
    if (s !== "connected") this.#recover("resync");
  }

  /** The peer's socket dropped: ICE restarts would only pile up in its queue until it is back. */
  setPeerAway(away) {
    this.peerAway = away;
    if (away) return this.#status(this.pc);
    // A peer that reloaded makes a fresh offer of its own: restart only if none came.
    this.#timer("resync", PEER_BACK_GRACE_MS, () => this.pc?.connectionState !== "connected" && this.resync());
  }

  setMuted(muted) {
    this.muted = muted;
    for (const t of this.local ? this.local.getAudioTracks() : []) t.enabled = !muted;
  }

  /** The device id of the microphone in use. */
  microphoneId() {
    const track = this.local ? this.local.getAudioTracks()[0] : null;
    return track && track.getSettings ? track.getSettings().deviceId || null : null;
  }

  /**
   * Switches to another microphone without renegotiating: RTCRtpSender.replaceTrack swaps the
   * track on the running connection (the new one must be audio, like the old).
   */
  async replaceMicrophone(stream) {
    const track = stream.getAudioTracks()[0];
    if (!track || this.closed) {
      for (const t of stream.getTracks()) t.stop();
      return;
    }
    track.enabled = !this.muted;
    if (this.pc) {
      for (const sender of this.pc.getSenders()) {
        if (sender.track && sender.track.kind === "audio") await sender.replaceTrack(track);
      }
    }
    const old = this.local;
    this.local = stream;
    for (const t of old ? old.getTracks() : []) t.stop();
    this.#meter("local", stream);
  }

  /** Total audio bytes received on the current connection (for diagnostics and tests). */
  async bytesReceived() {
    if (!this.pc) return 0;
    let total = 0;
    (await this.pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") total += s.bytesReceived || 0;
    });
    return total;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    for (const t of Object.values(this.timers)) clearTimeout(t);
    clearInterval(this.meterTimer);
    if (this.pc) this.pc.close();
    this.pc = null;
    for (const t of this.local ? this.local.getTracks() : []) t.stop();
    if (this.ctx) this.ctx.close().catch(() => {});
    this.audio.srcObject = null;
  }

  // ------------------------------------------------------------------------ the connection

  /** Replaces the connection with a fresh one (new DTLS certificate, so a new code). */
  #newPc({ offer, why }) {
    if (this.pc) this.pc.close();
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.pc = pc;
    this.why = why;
    this.canOffer = offer; // the answering side must not offer before the first exchange
    this.makingOffer = false;
    this.ignoreOffer = false;
    for (const track of this.local.getAudioTracks()) pc.addTrack(track, this.local);
    const mine = (f) => (...args) => pc === this.pc && !this.closed && f(...args);
    pc.onnegotiationneeded = mine(() => this.#offer(pc));
    pc.onicecandidate = mine((ev) => this.#send("ice", { candidate: ev.candidate ? ev.candidate.toJSON() : null }));
    pc.ontrack = mine((ev) => this.#play(ev));
    pc.onconnectionstatechange = mine(() => this.#onState(pc));
    pc.oniceconnectionstatechange = mine(() => this.#onState(pc));
    this.#timer("connect", CONNECT_TIMEOUT_MS, () => pc.connectionState !== "connected" && this.#recover("timeout"));
    this.#status(pc);
    return pc;
  }

  /** Offers (`iceRestart`: with new ICE credentials), unless an exchange is under way. */
  async #offer(pc, { iceRestart = false } = {}) {
    if (!this.canOffer || this.makingOffer || pc.signalingState !== "stable") return;
    try {
      this.makingOffer = true;
      await pc.setLocalDescription(iceRestart ? await pc.createOffer({ iceRestart: true }) : undefined);
      // Crossed offers may have rolled ours back meanwhile: send only a live offer.
      if (pc !== this.pc || pc.signalingState !== "have-local-offer") return;
      this.#send("sdp", { description: { type: "offer", sdp: pc.localDescription.sdp } });
      this.awaitingOwnOffer = false;
      this.#watchOffer(pc, ++this.offers);
    } catch (e) {
      console.warn("could not make an offer", e);
    } finally {
      this.makingOffer = false;
    }
  }

  /**
   * An offer lost (the peer was away) or ignored (offers crossed while both pages rejoined, each
   * dropping the other's as stale) is made again, a few times.
   */
  #watchOffer(pc, serial) {
    this.#timer("offer", OFFER_TIMEOUT_MS, async () => {
      if (pc !== this.pc || pc.signalingState !== "have-local-offer" || this.offers !== serial) return;
      if (this.peerAway || this.offerRetries >= MAX_RESTARTS) return;
      this.offerRetries += 1;
      await pc.setLocalDescription({ type: "rollback" }).catch(() => {});
      if (pc === this.pc) this.#offer(pc, { iceRestart: true });
    });
  }

  async #onDescription(description) {
    let pc = this.pc;
    if (!pc) return;
    if (pc.signalingState === "closed") pc = this.#newPc({ offer: false, why: "self" });
    const incoming = fingerprints(description.sdp);
    const current = pc.remoteDescription ? fingerprints(pc.remoteDescription.sdp) : null;
    if (current && incoming && incoming !== current) {
      if (description.type === "answer") {
        // Our offer was answered by a new connection of the peer's; ours cannot take it.
        this.#newPc({ offer: true, why: "peer" });
        return;
      }
      pc = this.#newPc({ offer: false, why: "peer" });
    }
    // Perfect negotiation (MDN): on crossed offers only the polite side gives way.
    const collision = description.type === "offer" && (this.makingOffer || pc.signalingState !== "stable");
    this.ignoreOffer = !this.polite && collision;
    if (this.ignoreOffer) return;
    try {
      if (collision) {
        await Promise.all([pc.setLocalDescription({ type: "rollback" }), pc.setRemoteDescription(description)]);
      } else {
        await pc.setRemoteDescription(description);
      }
    } catch (e) {
      // e.g. an answer to an offer we already rolled back or replaced
      console.warn("remote description refused", e);
      return;
    }
    if (description.type === "offer") {
      await pc.setLocalDescription();
      if (pc !== this.pc) return;
      this.#send("sdp", { description: { type: "answer", sdp: pc.localDescription.sdp } });
    }
    this.canOffer = true; // after the first exchange, either side may renegotiate
    this.offerRetries = 0;
    await this.#updateCode(pc);
  }

  async #onCandidate(candidate) {
    if (!this.pc) return;
    try {
      await this.pc.addIceCandidate(candidate || undefined); // null = end of candidates
    } catch (e) {
      // Candidates for an offer we ignored or dropped, or for a connection that no longer exists.
      if (!this.ignoreOffer && this.pc.remoteDescription) console.warn("ICE candidate refused", e);
    }
  }

  /** Candidates and descriptions for the connection a reload destroyed. */
  #stale(sdp) {
    if (this.awaitingOwnOffer) return true;
    return Boolean(this.staleFingerprint) && !this.pc?.remoteDescription && fingerprints(sdp) === this.staleFingerprint;
  }

  // -------------------------------------------------------------------------------- recovery

  #onState(pc) {
    const state = pc.connectionState;
    if (state === "connected") {
      this.restarts = 0;
      this.staleFingerprint = null;
      this.#clear("connect");
      this.#clear("disconnected");
    } else if (state === "failed") {
      this.#clear("disconnected");
      this.#recover("failed");
    } else if (this.#interrupted(pc) && !this.timers.disconnected) {
      this.#timer("disconnected", DISCONNECTED_RESTART_MS, () => this.#interrupted(pc) && this.#recover("disconnected"));
    }
    this.#status(pc);
  }

  /** ICE restart while the connection exists; a fresh connection when it is gone. */
  #recover(reason) {
    const pc = this.pc;
    if (this.closed || this.peerAway) return this.#status(pc);
    if (pc && this.#encryptionFailed(pc)) return this.#status(pc); // a new path would not help
    if (pc && pc.connectionState === "connected") return;
    if (this.restarts >= MAX_RESTARTS) return this.#status(pc, "network-failed");
    this.restarts += 1;
    console.info(`restarting media (${reason}), attempt ${this.restarts}`);
    if (!pc || pc.connectionState === "closed") {
      this.#newPc({ offer: true, why: "self" });
    } else {
      this.#restartIce(pc);
    }
    this.#timer("connect", CONNECT_TIMEOUT_MS, () => this.pc?.connectionState !== "connected" && this.#recover("timeout"));
    this.#status(this.pc, "restarting");
  }

  /**
   * Offers with new ICE credentials now (an explicit offer: Chrome does not always fire
   * negotiationneeded after restartIce()); an offer already out is renewed by its watchdog.
   */
  #restartIce(pc) {
    this.canOffer = true;
    this.#offer(pc, { iceRestart: true });
  }

  #interrupted(pc) {
    return pc === this.pc && (pc.connectionState === "disconnected" || pc.iceConnectionState === "disconnected");
  }

  /**
   * The path works but the encrypted handshake failed: the DTLS fingerprint in the description
   * did not match the certificate the other side presented (a changed description, or a bug).
   */
  #encryptionFailed(pc) {
    const dtls = pc.getSenders().map((s) => s.transport).find(Boolean);
    const iceUp = ["connected", "completed"].includes(pc.iceConnectionState);
    return Boolean(dtls && dtls.state === "failed" && iceUp);
  }

  /** phase: connecting | connected | interrupted | waiting | restarting | network-failed | encryption-failed */
  #status(pc, phase = null) {
    const state = pc ? pc.connectionState : "closed";
    if (!phase) {
      if (pc && this.#encryptionFailed(pc)) phase = "encryption-failed";
      else if (state === "connected") phase = "connected";
      else if (this.peerAway) phase = "waiting";
      else if (pc && this.#interrupted(pc)) phase = "interrupted";
      else if (state === "failed") phase = this.restarts >= MAX_RESTARTS ? "network-failed" : "restarting";
      else phase = "connecting";
    }
    this.dispatchEvent(new CustomEvent("status", { detail: { pc: state, ice: pc ? pc.iceConnectionState : "closed", phase } }));
  }

  // ------------------------------------------------------------------------------- plumbing

  #send(type, fields) {
    // queue: an sdp/ice written while our socket reconnects goes out once it is back
    this.signaling.send({ type, call_id: this.callId, ...fields }, { queue: true });
  }

  #enqueue(step) {
    this.queue = this.queue.then(step).catch((e) => console.warn("signaling step failed", e));
  }

  #timer(name, ms, fn) {
    this.#clear(name);
    this.timers[name] = setTimeout(() => {
      delete this.timers[name];
      if (!this.closed) fn();
    }, ms);
  }

  #clear(name) {
    clearTimeout(this.timers[name]);
    delete this.timers[name];
  }

  async #updateCode(pc) {
    const local = pc.currentLocalDescription;
    const remote = pc.currentRemoteDescription;
    if (!local || !remote) return;
    const code = await verificationCode(local.sdp, remote.sdp);
    if (!code || pc !== this.pc || code === this.code) return;
    const previous = this.code;
    this.code = code;
    this.remoteFingerprint = fingerprints(remote.sdp);
    this.dispatchEvent(new CustomEvent("code", { detail: { code, previous, why: this.why } }));
  }

  #play(ev) {
    const stream = ev.streams[0] || new MediaStream([ev.track]);
    this.audio.srcObject = stream;
    this.audio.play().catch(() => {});
    this.#meter("remote", stream);
  }

  #meter(which, stream) {
    if (!this.ctx) this.ctx = new AudioContext();
    const source = this.ctx.createMediaStreamSource(stream);
    const analyser = this.ctx.createAnalyser();
    analyser.fftSize = 512;
    source.connect(analyser);
    this[`${which}Analyser`] = analyser;
  }

  #startMeters() {
    const level = (a) => {
      if (!a) return 0;
      const buf = new Float32Array(a.fftSize);
      a.getFloatTimeDomainData(buf);
      let sum = 0;
      for (const v of buf) sum += v * v;
      return Math.min(1, Math.sqrt(sum / buf.length) * 4);
    };
    this.meterTimer = setInterval(() => {
      if (this.ctx && this.ctx.state === "suspended") this.ctx.resume().catch(() => {});
      this.dispatchEvent(new CustomEvent("levels", { detail: { local: level(this.localAnalyser), remote: level(this.remoteAnalyser) } }));
    }, 100);
  }
}
