// One WebRTC audio call: microphone capture, RTCPeerConnection, offer/answer, trickle ICE in
// both directions, mute, level meters and the verification code.
// Events: "state" (detail: connection state), "code" (detail: six digits), "levels"
// (detail: {local, remote} in 0..1).

import { verificationCode } from "./verify.js";

export class CallSession extends EventTarget {
  constructor({ signaling, callId, iceServers, role, audioElement }) {
    super();
    this.signaling = signaling;
    this.callId = callId;
    this.iceServers = iceServers || [];
    this.role = role; // "caller" creates the offer once the call is accepted
    this.audio = audioElement;
    this.pc = null;
    this.local = null;
    this.pendingIce = [];
    this.code = null;
    this.ctx = null;
    this.meterTimer = null;
    this.closed = false;
    this.ready = null;
  }

  /** Starts capture and the peer connection; messages that arrive meanwhile wait for it. */
  start() {
    this.ready = this.#start();
    return this.ready;
  }

  async #start() {
    this.local = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      video: false,
    });
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.pc = pc;
    for (const track of this.local.getAudioTracks()) pc.addTrack(track, this.local);
    pc.onicecandidate = (ev) => {
      this.signaling.send({ type: "ice", call_id: this.callId, candidate: ev.candidate ? ev.candidate.toJSON() : null });
    };
    pc.ontrack = (ev) => {
      const stream = ev.streams[0] || new MediaStream([ev.track]);
      this.audio.srcObject = stream;
      this.audio.play().catch(() => {});
      this.#meter("remote", stream);
    };
    pc.onconnectionstatechange = () => {
      this.dispatchEvent(new CustomEvent("state", { detail: pc.connectionState }));
    };
    this.#meter("local", this.local);
    this.#startMeters();
    if (this.role === "caller") {
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      this.signaling.send({ type: "sdp", call_id: this.callId, description: { type: "offer", sdp: pc.localDescription.sdp } });
    }
  }

  async onSdp(description) {
    await this.ready;
    const pc = this.pc;
    if (!pc) return;
    await pc.setRemoteDescription(description);
    if (description.type === "offer") {
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      this.signaling.send({ type: "sdp", call_id: this.callId, description: { type: "answer", sdp: pc.localDescription.sdp } });
    }
    for (const c of this.pendingIce.splice(0)) await this.#addIce(c);
    const code = await verificationCode(pc.localDescription.sdp, pc.remoteDescription.sdp);
    if (code) {
      this.code = code;
      this.dispatchEvent(new CustomEvent("code", { detail: code }));
    }
  }

  async onIce(candidate) {
    await this.ready;
    if (!this.pc || !this.pc.remoteDescription) {
      this.pendingIce.push(candidate);
      return;
    }
    await this.#addIce(candidate);
  }

  async #addIce(candidate) {
    try {
      // null = end of candidates
      await this.pc.addIceCandidate(candidate || undefined);
    } catch (e) {
      console.warn("ICE candidate refused", e);
    }
  }

  setMuted(muted) {
    for (const t of this.local ? this.local.getAudioTracks() : []) t.enabled = !muted;
  }

  /** Total audio bytes received so far (for diagnostics and tests). */
  async bytesReceived() {
    if (!this.pc) return 0;
    let total = 0;
    (await this.pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") total += s.bytesReceived || 0;
    });
    return total;
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

  close() {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.meterTimer);
    if (this.pc) this.pc.close();
    for (const t of this.local ? this.local.getTracks() : []) t.stop();
    if (this.ctx) this.ctx.close().catch(() => {});
    this.audio.srcObject = null;
  }
}

/** A soft two-tone ring made with Web Audio (no audio files). */
export class Ringtone {
  constructor() {
    this.ctx = null;
    this.timer = null;
  }

  start() {
    if (this.timer) return;
    try {
      this.ctx = new AudioContext();
    } catch {
      return;
    }
    const ring = () => {
      const t = this.ctx.currentTime;
      for (const [freq, at] of [[440, 0], [480, 0], [440, 0.5], [480, 0.5]]) {
        const osc = this.ctx.createOscillator();
        const gain = this.ctx.createGain();
        osc.frequency.value = freq;
        gain.gain.setValueAtTime(0.0001, t + at);
        gain.gain.exponentialRampToValueAtTime(0.08, t + at + 0.05);
        gain.gain.exponentialRampToValueAtTime(0.0001, t + at + 0.4);
        osc.connect(gain).connect(this.ctx.destination);
        osc.start(t + at);
        osc.stop(t + at + 0.45);
      }
    };
    ring();
    this.timer = setInterval(ring, 3000);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
    if (this.ctx) this.ctx.close().catch(() => {});
    this.ctx = null;
  }
}
