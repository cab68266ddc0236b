// Making a ringing call noticeable: tones made with Web Audio (no audio files), the tab's title
// and favicon while it rings, and a system notification when the tab is hidden.
// Everything here stops at once through stopAll(): on answer, reject, cancel,
// answered_elsewhere or any other end of the call.

import { t } from "./i18n.js";

/**
 * The two patterns, as (frequencies, on seconds, cycle seconds).
 * Ringtone (callee): two-tone warble 440+480 Hz, two bursts every 3 s, as on phones.
 * Ringback (caller): 440+480 Hz, 2 s on, 4 s off — the North American ringback tone, which
 * callers everywhere recognise as "it is ringing".
 */
const PATTERNS = {
  ringtone: { bursts: [[0, 0.4], [0.5, 0.4]], cycle: 3, level: 0.12 },
  ringback: { bursts: [[0, 2]], cycle: 6, level: 0.05 },
};

/** One repeating tone pattern on its own AudioContext. */
class Tone {
  /** `onCycle(tone)`: after each repetition is scheduled (the tests read the graph's state). */
  constructor(kind, onCycle) {
    this.kind = kind;
    this.onCycle = onCycle;
    this.ctx = new AudioContext();
    this.timer = null;
    this.active = 0; // oscillators playing now (a test hook reads it)
    this.gain = this.ctx.createGain();
    this.gain.gain.value = PATTERNS[kind].level;
    this.gain.connect(this.ctx.destination);
  }

  start() {
    const p = PATTERNS[this.kind];
    const cycle = () => {
      if (this.ctx.state === "suspended") this.ctx.resume().catch(() => {});
      const t0 = this.ctx.currentTime + 0.05;
      for (const [at, len] of p.bursts) {
        for (const freq of [440, 480]) {
          const osc = this.ctx.createOscillator();
          const env = this.ctx.createGain();
          osc.frequency.value = freq;
          // Short ramps: no clicks at the edges.
          env.gain.setValueAtTime(0.0001, t0 + at);
          env.gain.exponentialRampToValueAtTime(1, t0 + at + 0.03);
          env.gain.setValueAtTime(1, t0 + at + len - 0.05);
          env.gain.exponentialRampToValueAtTime(0.0001, t0 + at + len);
          osc.connect(env).connect(this.gain);
          this.active += 1;
          osc.onended = () => (this.active -= 1);
          osc.start(t0 + at);
          osc.stop(t0 + at + len + 0.01);
        }
      }
      this.onCycle(this);
    };
    cycle();
    this.timer = setInterval(cycle, p.cycle * 1000);
  }

  stop() {
    clearInterval(this.timer);
    this.ctx.close().catch(() => {});
  }

  state() {
    return { kind: this.kind, context: this.ctx.state, oscillators: this.active, time: this.ctx.currentTime };
  }
}

/** A phone handset icon on a coloured disc, as an SVG data URL (CSP allows img-src data:). */
function favicon(color) {
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><circle cx="16" cy="16" r="15" fill="${color}"/><path fill="#fff" d="M11 8c1 0 3 4 3 5s-2 2-2 3 3 5 5 5 2-2 3-2 5 2 5 3-2 4-4 4C14 26 6 18 6 11c0-2 3-3 5-3z"/></svg>`;
  return `data:image/svg+xml,${encodeURIComponent(svg)}`;
}
const ICON_IDLE = favicon("#2456d6");
const ICON_RINGING = favicon("#137a3a");

export class Attention {
  constructor() {
    this.tone = null;
    this.flash = null;
    this.baseTitle = document.title;
    this.notification = null;
    /** What happened, for the browser tests: {what, hidden, title, ...}. */
    this.log = [];
    this.setIcon(ICON_IDLE);
  }

  setIcon(href) {
    let link = document.querySelector("link[rel='icon']");
    if (!link) {
      link = document.createElement("link");
      link.rel = "icon";
      document.head.append(link);
    }
    link.href = href;
  }

  #record(what, extra = {}) {
    this.log.push({ what, hidden: document.hidden, title: document.title, ...extra });
    if (this.log.length > 100) this.log.shift();
  }

  #play(kind) {
    if (this.tone && this.tone.kind === kind) return;
    if (this.tone) this.tone.stop();
    try {
      this.tone = new Tone(kind, (tone) => this.#record("tone", { tone: tone.state() }));
      this.tone.start();
    } catch (e) {
      this.tone = null; // no Web Audio: the title and notification still tell
      console.warn("cannot play a tone", e);
    }
  }

  /** The callee's device rings: tone, flashing title and icon, a notification if hidden. */
  ringing(peer) {
    this.#play("ringtone");
    this.setIcon(ICON_RINGING);
    const ringTitle = () => `📞 ${t("title.ringing", { peer })}`;
    let on = true;
    document.title = ringTitle();
    clearInterval(this.flash);
    // Alternating text catches the eye in a row of tabs.
    this.flash = setInterval(() => {
      on = !on;
      document.title = on ? ringTitle() : `🔔 ${t("title.ringing", { peer })}`;
    }, 1000);
    this.#notify(peer);
    this.#record("ringing", { tone: this.tone ? this.tone.state() : null });
  }

  /** The caller hears ringback once the callee's device rings. */
  ringback(peer) {
    this.#play("ringback");
    document.title = t("title.calling", { peer });
    this.#record("ringback", { tone: this.tone ? this.tone.state() : null });
  }

  /** In a call: the title says with whom, nothing rings. */
  inCall(peer) {
    this.stopAll();
    document.title = t("title.incall", { peer });
  }

  /** After a language switch: the steady titles in the new language (the flashing one follows by itself). */
  retitle(c) {
    if (c.state === "active") document.title = t("title.incall", { peer: c.peer });
    else if (this.tone && this.tone.kind === "ringback") document.title = t("title.calling", { peer: c.peer });
  }

  /** Stops every sound, the flashing, the notification; the title and icon return to normal. */
  stopAll() {
    const was = Boolean(this.tone || this.flash || this.notification);
    if (this.tone) this.tone.stop();
    this.tone = null;
    clearInterval(this.flash);
    this.flash = null;
    if (this.notification) this.notification.close();
    this.notification = null;
    document.title = this.baseTitle;
    this.setIcon(ICON_IDLE);
    if (was) this.#record("stopped");
  }

  #notify(peer) {
    if (!document.hidden || !("Notification" in window) || Notification.permission !== "granted") return;
    try {
      const n = new Notification(t("notify.title"), {
        body: t("notify.body", { peer }),
        tag: "callsignal-incoming",
        requireInteraction: true,
      });
      n.onclick = () => {
        window.focus();
        n.close();
      };
      n.onshow = () => this.#record("notification-shown");
      n.onerror = () => this.#record("notification-error");
      this.notification = n;
      this.#record("notification", { notification: { title: n.title, body: n.body } });
    } catch (e) {
      this.#record("notification-failed", { error: String(e) });
    }
  }

  /** For the tests: the tone now, and what happened. */
  state() {
    return {
      tone: this.tone ? this.tone.state() : null,
      flashing: Boolean(this.flash),
      notification: this.notification ? { title: this.notification.title, body: this.notification.body } : null,
      icon: document.querySelector("link[rel='icon']").href === ICON_RINGING ? "ringing" : "idle",
      title: document.title,
      log: this.log.slice(),
    };
  }
}

/** Whether to offer turning notifications on (never asked on load: only from the prompt's button). */
export function notificationsAskable() {
  return "Notification" in window && Notification.permission === "default";
}
