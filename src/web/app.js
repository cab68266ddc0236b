// The callsignal browser client: screens, call flow and the glue between the REST API,
// the signaling socket and the WebRTC call. All text is inserted with textContent, and every
// string comes from i18n.js (English and Russian).

import { Api, ApiError } from "./api.js";
import { Signaling } from "./signaling.js";
import { CallSession, getMicrophone, listMicrophones, microphoneCause, simulateMicrophoneFailure } from "./call.js";
import { formatCode } from "./verify.js";
import { applyStatic, currentLang, formatTime, missingKeys, msg as phrase, onLangChange, say, setLang, t } from "./i18n.js";
import { Attention, notificationsAskable } from "./attention.js";
import { QualityProbe } from "./quality.js";
import { endedMsg, errorMsg, micRefusedMsg } from "./messages.js";

const $ = (id) => document.getElementById(id);
const api = new Api();
const signaling = new Signaling(api);
const attention = new Attention();
const quality = new QualityProbe();
/** How often the connection quality is sampled during a call. */
const QUALITY_EVERY_MS = 2000;

/**
 * The call this page shows: {id, peer, role: caller|callee, state: ringing|active, session,
 * mic (the granted microphone until a session owns it), startedAt, byMe, rejoined} or null.
 */
let call = null;
/** An invite being prepared or sent, before `call.created`: {to, mic, sent, cancelled}. */
let pendingInvite = null;
/** Calls this page has finished with: their late messages must not touch the screen. */
const finished = new Set();
let timer = null;
let qualityTimer = null;

const SCREENS = ["auth", "home", "outgoing", "incoming", "incall"];

function show(name) {
  for (const s of SCREENS) $(`screen-${s}`).hidden = s !== name;
  const focus = { auth: "auth-username", home: "call-to", outgoing: "cancel", incoming: "accept", incall: "hangup" }[name];
  if (focus) $(focus).focus();
}

/**
 * The page's one notice: a phrase() (or a list of them), or null to clear it. `cause` names what
 * it is about, so it goes away when that is over: "offline" clears when the socket is back
 * online, "wait" after `clearAfterMs`; any notice clears when the user starts something new.
 */
let noticeCause = null;
let noticeTimer = null;
function notice(m, { cause = null, clearAfterMs = null } = {}) {
  const n = $("notice");
  say(n, m);
  n.hidden = !m;
  noticeCause = m ? cause : null;
  clearTimeout(noticeTimer);
  if (m && clearAfterMs) noticeTimer = setTimeout(() => notice(null), clearAfterMs);
}

/** Clears the notice if it is about `cause`. */
function causeGone(cause) {
  if (noticeCause === cause) notice(null);
}

/** Why the verification code changed (shown beside the code). */
function codeNote(m) {
  say($("verify-note"), m);
  $("verify-note").hidden = !m;
}

/** "Chrome 156 on Linux" from the server's `browser` and `os`, in the page's language. */
function deviceName(s) {
  if (s.browser && s.os) return t("sessions.device", { browser: s.browser, os: s.os });
  if (s.browser) return t("sessions.browser_only", { browser: s.browser });
  if (s.os) return t("sessions.os_only", { os: s.os });
  return t("sessions.unknown");
}

function duration(ms) {
  const s = Math.floor(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

// ----------------------------------------------------------------------------------- account

async function authSubmit(register) {
  const username = $("auth-username").value.trim();
  const password = $("auth-password").value;
  const err = $("auth-error");
  err.hidden = true;
  for (const b of [$("login"), $("register")]) b.disabled = true;
  try {
    if (register) await api.register(username, password);
    await api.login(username, password);
    $("auth-password").value = "";
    loggedIn({ fresh: true });
  } catch (e) {
    say(err, e instanceof ApiError ? errorMsg(e.code, { retryAfter: e.retryAfter, password }) : phrase("notice.unreachable"));
    err.hidden = false;
    // A lock-out ends: its sentence (with the wait) must not outlive it.
    if (e.retryAfter) setTimeout(() => (err.hidden = true), e.retryAfter * 1000);
  } finally {
    for (const b of [$("login"), $("register")]) b.disabled = false;
  }
}

/** `fresh`: a login typed just now (not a reload), the moment to offer notifications. */
function loggedIn({ fresh = false } = {}) {
  $("whoami-name").textContent = api.user.username;
  $("whoami").hidden = false;
  $("logout").hidden = false;
  notice(null);
  show("home");
  signaling.start();
  loadHistory();
  loadSessions();
  offerNotifications(fresh);
}

function loggedOut(m) {
  cleanupCall();
  showElsewhere(null);
  signaling.stop();
  api.forget();
  $("whoami").hidden = true;
  $("logout").hidden = true;
  $("notify-ask").hidden = true;
  show("auth");
  notice(m || null);
}

// ------------------------------------------------------------------------ notifications

const NOTIFY_LATER_KEY = "callsignal.notify_later";

/**
 * After a login, ask whether to turn system notifications on — by an in-page prompt whose
 * button asks the browser (browsers only allow asking from a click, and asking on load
 * annoys people). "Not now" is remembered on this device.
 */
function offerNotifications(fresh) {
  const ask = fresh && notificationsAskable() && !localStorage.getItem(NOTIFY_LATER_KEY);
  $("notify-ask").hidden = !ask;
}

async function enableNotifications() {
  $("notify-ask").hidden = true;
  const result = await Notification.requestPermission().catch(() => "denied");
  if (result === "denied") notice(phrase("notify.denied"));
}

// ----------------------------------------------------------------------------- history

let historyCache = [];

/**
 * Shows the call history. `endedId`: a call that just ended; its record is written a moment
 * after `call.ended` is sent, so the list is fetched again until it shows the call as ended.
 */
async function loadHistory(endedId = null, attempt = 0) {
  try {
    const { calls } = await api.calls(20);
    const pending = endedId && !calls.some((c) => c.id === endedId && c.status === "ended");
    if (pending && attempt < 10) setTimeout(() => loadHistory(endedId, attempt + 1), 200 * (attempt + 1));
    historyCache = calls;
    renderHistory();
  } catch (e) {
    if (e.status === 401) loggedOut(phrase("notice.session_ended"));
  }
}

function renderHistory() {
  const list = $("history");
  const calls = historyCache;
  list.replaceChildren(
    ...calls.map((c) => {
      const li = document.createElement("li");
      const outgoing = c.caller.id === api.user.id;
      const peer = outgoing ? c.callee.username : c.caller.username;
      const who = document.createElement("span");
      const arrow = document.createElement("span");
      arrow.setAttribute("aria-hidden", "true");
      arrow.textContent = outgoing ? "↗ " : "↙ ";
      const dir = document.createElement("span");
      dir.className = "sr-only";
      dir.textContent = `${t(outgoing ? "history.outgoing" : "history.incoming")} `;
      who.append(arrow, dir, document.createTextNode(peer));
      const meta = document.createElement("span");
      meta.className = "meta";
      const what = c.status === "ended" ? t(`short.${c.end_reason}`) : t(`short.${c.status}`);
      meta.textContent = `${what}${c.duration_ms != null ? ` · ${duration(c.duration_ms)}` : ""} · ${formatTime(c.created_at)}`;
      li.dataset.callId = c.id;
      li.dataset.reason = c.end_reason || "";
      li.append(who, meta);
      return li;
    }),
  );
  if (!calls.length) {
    const li = document.createElement("li");
    li.className = "meta";
    li.textContent = t("home.no_calls");
    list.replaceChildren(li);
  }
}

// ---------------------------------------------------------------------------- sessions

let sessionsCache = [];

async function loadSessions() {
  try {
    const { sessions } = await api.sessions();
    sessionsCache = sessions;
    renderSessions();
  } catch (e) {
    if (e.status === 401) loggedOut(phrase("notice.session_ended"));
  }
}

function renderSessions() {
  const list = $("sessions");
  list.replaceChildren(
    ...sessionsCache.map((s) => {
      const li = document.createElement("li");
      li.dataset.sessionId = s.id;
      const device = deviceName(s);
      const name = document.createElement("span");
      name.className = "device";
      name.textContent = s.current ? `${t("sessions.this")} — ${device}` : device;
      const meta = document.createElement("span");
      meta.className = "meta";
      const parts = [t("sessions.signed_in", { when: formatTime(s.created_at) }), t("sessions.last", { when: formatTime(s.last_seen_at) })];
      if (s.last_ip) parts.push(t("sessions.from", { ip: s.last_ip }));
      meta.textContent = parts.join(" · ");
      const left = document.createElement("span");
      left.append(name, document.createElement("br"), meta);
      li.append(left);
      if (!s.current) {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "ghost";
        b.textContent = t("sessions.sign_out");
        b.setAttribute("aria-label", t("sessions.sign_out_label", { device, when: formatTime(s.created_at) }));
        b.onclick = async () => {
          await api.revokeSession(s.id).catch(() => {});
          loadSessions();
        };
        li.append(b);
      }
      return li;
    }),
  );
  $("sign-out-others").hidden = !sessionsCache.some((s) => !s.current);
}

async function signOutOthers() {
  const status = $("sessions-status");
  try {
    const n = await api.revokeOthers();
    say(status, n ? phrase("sessions.signed_out_others", { n }) : phrase("sessions.none_other"));
  } catch (e) {
    say(status, e instanceof ApiError ? errorMsg(e.code, { retryAfter: e.retryAfter }) : phrase("notice.unreachable"));
  }
  loadSessions();
}

// ------------------------------------------------------------------------------------- calls

const SNAPSHOT_KEY = "callsignal.call";

/**
 * What a reload must not forget about the call, per tab like the login: its code (to say
 * whether it changed), the peer's DTLS fingerprint (to spot messages meant for the lost
 * connection) and when it was answered (for the timer).
 */
function saveSnapshot() {
  if (!call || call.state !== "active") return;
  const s = call.session;
  sessionStorage.setItem(SNAPSHOT_KEY, JSON.stringify({
    id: call.id,
    code: s ? s.code : null,
    remoteFp: s ? s.remoteFingerprint || null : null,
    startedAt: call.startedAt,
  }));
}

function loadSnapshot(callId) {
  try {
    const snap = JSON.parse(sessionStorage.getItem(SNAPSHOT_KEY));
    return snap && snap.id === callId ? snap : null;
  } catch {
    return null;
  }
}

function stopStream(stream) {
  for (const track of stream ? stream.getTracks() : []) track.stop();
}

function newCall(id, peer, role, state) {
  return { id, peer, role, state, session: null, mic: null, startedAt: null, byMe: false, cause: null, rejoined: null };
}

function live(stream) {
  return stream && stream.active ? stream : null;
}

/** Forgets an invite that never became a call. */
function dropInvite() {
  if (pendingInvite) stopStream(pendingInvite.mic);
  pendingInvite = null;
}

function cleanupCall() {
  attention.stopAll();
  clearInterval(timer);
  timer = null;
  stopQuality();
  if (call) {
    if (call.session) call.session.close();
    stopStream(call.mic);
  }
  dropInvite();
  call = null;
  sessionStorage.removeItem(SNAPSHOT_KEY);
  $("peer-reconnecting").hidden = true;
  showMuted(false);
  $("verify-code").textContent = formatCode(null);
  delete $("verify-code").dataset.code;
  codeNote(null);
  say($("call-state"), phrase("phase.connecting"));
  $("accept").disabled = false;
}

/** Leaves the call on this page: home screen, the reason, fresh history. */
function finishCall(m) {
  const id = call ? call.id : null;
  if (id) finished.add(id);
  cleanupCall();
  show("home");
  notice(m, { cause: "call" });
  loadHistory(id);
}

function showOutgoing(m) {
  $("out-title").textContent = call ? call.peer : pendingInvite.to;
  say($("out-state"), m);
  show("outgoing");
}

function showIncoming() {
  $("in-title").textContent = call.peer;
  say($("in-state"), null);
  show("incoming");
  attention.ringing(call.peer);
}

/** Asks for the microphone first: without one, no invite is sent. */
async function placeCall(to) {
  if (call || pendingInvite) return;
  notice(null);
  // Checked here because the server answers a bare `bad_message` to both (contract §2.2).
  if (api.user && to.toLowerCase() === api.user.username) return notice(phrase("notice.self_call"));
  if (!/^[A-Za-z0-9_.-]{3,32}$/.test(to)) return notice(errorMsg("invalid_username"));
  const invite = { to, mic: null, sent: false, cancelled: false };
  pendingInvite = invite;
  showOutgoing(phrase("out.mic"));
  let mic;
  try {
    mic = await getMicrophone(preferredMic);
  } catch (e) {
    if (pendingInvite === invite) {
      pendingInvite = null;
      show("home");
      notice(micRefusedMsg(e));
    }
    return;
  }
  if (pendingInvite !== invite) return stopStream(mic); // cancelled meanwhile
  invite.mic = mic;
  if (call) {
    // Their call rang while the browser asked: it is on screen; keep the microphone for it.
    pendingInvite = null;
    if (!live(call.mic)) call.mic = mic;
    else stopStream(mic);
    return;
  }
  say($("out-state"), phrase("out.calling"));
  invite.sent = signaling.send({ type: "call.invite", to, ref: "invite" });
  if (!invite.sent) {
    dropInvite();
    show("home");
    notice(phrase("notice.offline"), { cause: "offline" });
  }
}

/** Asks for the microphone before answering; without one, declines and says why. */
async function acceptCall() {
  const c = call;
  if (!c || c.role !== "callee" || c.state !== "ringing" || $("accept").disabled) return;
  attention.stopAll();
  $("accept").disabled = true;
  say($("in-state"), phrase("in.mic"));
  let mic = live(c.mic);
  try {
    mic = mic || (await getMicrophone(preferredMic));
  } catch (e) {
    if (call !== c) return;
    const cause = microphoneCause(e);
    c.byMe = true;
    c.cause = cause;
    notice(endedMsg("rejected", c, cause), { cause: "call" });
    signaling.send({ type: "call.reject", call_id: c.id, cause, ref: "reject" });
    return;
  }
  if (call !== c || c.byMe) return stopStream(mic); // ended or declined while the browser asked
  c.mic = mic;
  say($("in-state"), phrase("in.connecting"));
  if (!signaling.send({ type: "call.accept", call_id: c.id, ref: "accept" })) {
    $("accept").disabled = false;
    say($("in-state"), phrase("in.offline"));
  }
}

function rejectCall() {
  if (!call) return;
  attention.stopAll();
  call.byMe = true;
  signaling.send({ type: "call.reject", call_id: call.id, ref: "reject" });
}

function hangup() {
  if (!call) {
    // Before `call.created`: an invite already sent is cancelled as soon as its call exists.
    if (pendingInvite && pendingInvite.sent) pendingInvite.cancelled = true;
    else dropInvite();
    show("home");
    return;
  }
  call.byMe = true;
  const sent = signaling.send({ type: "call.hangup", call_id: call.id, ref: "hangup" }, { queue: true });
  // Offline: end here at once; the queued hangup goes out if the connection resumes, and a
  // fresh connection that still finds the call ends it (see syncCall).
  if (!sent) finishCall(endedMsg(call.state === "active" ? "hangup" : call.role === "caller" ? "cancelled" : "rejected", call));
}

function enterCall(startedAt) {
  $("call-peer").textContent = call.peer;
  $("peer-reconnecting").hidden = true;
  call.startedAt = startedAt;
  const tick = () => ($("call-timer").textContent = call && call.startedAt ? duration(Date.now() - call.startedAt) : "0:00");
  tick();
  clearInterval(timer);
  timer = setInterval(tick, 1000);
  show("incall");
  attention.inCall(call.peer);
  startQuality();
  saveSnapshot();
}

// ------------------------------------------------------------------ mute, microphone, quality

/** The microphone chosen in the call screen, used for the next calls too (this tab). */
let preferredMic = null;

/** Mute is shown three ways: the button's words, its colour, and a banner. */
function showMuted(muted) {
  say($("mute"), phrase(muted ? "call.unmute" : "call.mute"));
  $("mute").classList.toggle("is-muted", muted);
  $("mute").dataset.muted = String(muted);
  $("muted-banner").hidden = !muted;
}

function toggleMute() {
  if (!call || !call.session) return;
  const muted = $("mute").dataset.muted !== "true";
  call.session.setMuted(muted);
  showMuted(muted);
}

/** Fills the microphone list (labels exist once the microphone was granted, i.e. in a call). */
async function fillMicrophones() {
  const select = $("mic-select");
  const mics = await listMicrophones().catch(() => []);
  const current = call && call.session ? call.session.microphoneId() : preferredMic;
  select.replaceChildren(
    ...mics.map((m, i) => {
      const o = document.createElement("option");
      o.value = m.deviceId;
      o.textContent = m.label || (m.deviceId === "default" ? t("call.mic_default") : t("call.mic_n", { n: i + 1 }));
      o.selected = m.deviceId === current;
      return o;
    }),
  );
  $("mic-select").closest(".mic-choice").hidden = mics.length === 0;
}

async function chooseMicrophone() {
  const id = $("mic-select").value;
  const c = call;
  if (!c || !c.session) return;
  try {
    const stream = await getMicrophone(id);
    if (call !== c || !c.session) return stopStream(stream);
    await c.session.replaceMicrophone(stream);
    preferredMic = id;
    causeGone("mic");
  } catch {
    notice(phrase("call.mic_failed"), { cause: "mic" });
    fillMicrophones();
  }
}

function startQuality() {
  stopQuality();
  showQuality(null);
  qualityTimer = setInterval(async () => {
    const pc = call && call.session ? call.session.pc : null;
    const q = await quality.sample(pc).catch(() => null);
    if (qualityTimer) showQuality(q);
  }, QUALITY_EVERY_MS);
}

function stopQuality() {
  clearInterval(qualityTimer);
  qualityTimer = null;
  quality.prev = null;
}

/** Shows {rtt, loss, level}; a plain-words warning while it is poor (it goes once it recovers). */
function showQuality(q) {
  $("quality").dataset.level = q ? q.level : "unknown";
  say($("quality-level"), phrase(q ? `call.quality_${q.level}` : "call.quality_unknown"));
  say($("quality-detail"), q ? phrase("call.quality_detail", { rtt: q.rtt, loss: q.loss }) : null);
  $("quality-warn").hidden = !(q && q.level === "poor");
}

/** Phases a CallSession reports (call.js), each with its sentence in i18n.js (`phase.*`). */
const PHASES = new Set(["connecting", "connected", "interrupted", "waiting", "restarting", "network-failed", "encryption-failed"]);

function onStatus(detail) {
  const phase = PHASES.has(detail.phase) ? detail.phase : "connecting";
  say($("call-state"), phrase(`phase.${phase}`, { peer: call.peer }));
  $("screen-incall").dataset.pcState = detail.pc;
  $("screen-incall").dataset.phase = detail.phase;
  if (detail.phase === "connected") fillMicrophones();
}

/** A new code: show it, and when it replaces an earlier one of this call, say why. */
function onCode({ code, previous, why }) {
  $("verify-code").textContent = formatCode(code);
  $("verify-code").dataset.code = code;
  const before = previous || (call.rejoined && call.rejoined.code) || null;
  if (before && before !== code) {
    const key = why === "peer" ? "code.fresh_peer" : why === "rejoin" ? "code.fresh_rejoin" : "code.fresh_self";
    codeNote(phrase(key, { peer: call.peer }));
  }
  saveSnapshot();
}

/** Media for an active call. `rejoin`: this page lost its connection (a reload) and offers anew. */
async function startMedia(rejoin = null) {
  const c = call;
  let mic = live(c.mic);
  c.mic = null;
  if (!mic) {
    try {
      mic = await getMicrophone(preferredMic);
    } catch (e) {
      if (call !== c) return;
      c.byMe = true;
      c.cause = microphoneCause(e);
      signaling.send({ type: "call.hangup", call_id: c.id, cause: c.cause, ref: "hangup" });
      return;
    }
  }
  if (call !== c) return stopStream(mic);
  const session = new CallSession({
    signaling,
    callId: c.id,
    iceServers: signaling.welcome ? signaling.welcome.ice_servers : [],
    polite: c.role === "callee",
    audioElement: $("remote-audio"),
    localStream: mic,
    rejoin: rejoin ? { staleFingerprint: rejoin.remoteFp || null } : null,
  });
  c.session = session;
  session.addEventListener("status", (e) => call === c && onStatus(e.detail));
  session.addEventListener("code", (e) => call === c && onCode(e.detail));
  session.addEventListener("levels", (e) => {
    $("meter-in").value = e.detail.local;
    $("meter-out").value = e.detail.remote;
  });
  session.start({ offer: Boolean(rejoin) || c.role === "caller" });
}

/** The call was answered (here, or found active after a gap): into the call, media up. */
function onAccepted(msg) {
  if (!call || call.id !== msg.call_id || call.state === "active") return;
  call.state = "active";
  attention.stopAll();
  enterCall(Date.now());
  startMedia();
}

/** Brings the page back into a call the server says this connection is part of (a reload). */
function rejoin(wc) {
  call = newCall(wc.call_id, wc.peer.username, wc.role, wc.state);
  if (pendingInvite) {
    call.mic = pendingInvite.mic;
    pendingInvite = null;
  }
  if (wc.state === "ringing") return wc.role === "callee" ? showIncoming() : ringback();
  const snap = loadSnapshot(wc.call_id) || {};
  call.rejoined = snap;
  enterCall(snap.startedAt || Date.now());
  if (!snap.startedAt) restoreStartTime(call);
  startMedia(snap);
}

async function restoreStartTime(c) {
  try {
    const record = await api.call(c.id);
    if (record.answered_at) c.startedAt = Date.parse(record.answered_at);
  } catch {
    // the timer then counts from the rejoin
  }
}

/**
 * Brings the page in line with the server's view of our call (`welcome.call`).
 * `why`: "resumed" (the replay that follows brings what we missed), "fresh" (a new connection:
 * nothing is replayed) or "gap" (`resume_gap`: some missed messages are gone).
 */
function syncCall(wc, why) {
  const mine = wc && wc.here ? wc : null;
  if (why !== "resumed") showElsewhere(wc && !wc.here ? wc : null);
  if (mine && finished.has(mine.call_id)) {
    // We hung up while offline and the hangup never reached the server: say it again.
    signaling.send({ type: "call.hangup", call_id: mine.call_id });
    return;
  }
  if (call && (!mine || mine.call_id !== call.id)) {
    if (why === "resumed") return;
    if (wc && wc.call_id === call.id) return finishCall(phrase("ended.elsewhere"));
    return finishCall(why === "gap" ? phrase("ended.gap", { peer: call.peer }) : endedMsg("connection_lost", call));
  }
  if (!mine) {
    if (pendingInvite && pendingInvite.sent && why !== "resumed") {
      dropInvite();
      show("home");
      notice(phrase("notice.dropped_before_call"));
    }
    return;
  }
  if (!call) return rejoin(mine);
  if (mine.state === "active" && call.state === "ringing") return onAccepted({ call_id: call.id });
  // Messages may be lost (a gap) or this is a new connection: make sure media still flows.
  if (why !== "resumed" && call.session) call.session.resync();
}

/**
 * The user's call lives on another connection (another window or device): say so, and offer to
 * end it (a hangup from any connection of a party's user ends the call).
 */
function showElsewhere(wc) {
  $("elsewhere").hidden = !wc;
  $("elsewhere").dataset.callId = wc ? wc.call_id : "";
  say($("elsewhere-text"), wc ? phrase("home.elsewhere", { peer: wc.peer.username }) : null);
}

function endElsewhere() {
  const id = $("elsewhere").dataset.callId;
  if (id) signaling.send({ type: "call.hangup", call_id: id, ref: "hangup-elsewhere" });
  showElsewhere(null);
}

function onCreated(msg) {
  if (call && call.id === msg.call_id) return; // replayed after a rejoin
  const invite = pendingInvite;
  pendingInvite = null;
  if (call) {
    // Crossed invites: we are ringing with their call and ours ends `glare`; keep the microphone.
    if (invite && !live(call.mic)) call.mic = invite.mic;
    else if (invite) stopStream(invite.mic);
    return;
  }
  if (invite && invite.cancelled) {
    stopStream(invite.mic);
    finished.add(msg.call_id);
    signaling.send({ type: "call.hangup", call_id: msg.call_id });
    return;
  }
  call = newCall(msg.call_id, msg.to.username, "caller", "ringing");
  call.mic = invite ? invite.mic : null;
  showOutgoing(phrase("out.calling"));
}

/** The callee's device rings: the caller hears ringback from now until the call ends or is answered. */
function ringback() {
  showOutgoing(phrase("out.ringing"));
  attention.ringback(call.peer);
}

function onIncoming(msg) {
  if (call) return; // already ringing (a rejoin shows it too) or busy
  call = newCall(msg.call_id, msg.from.username, "callee", "ringing");
  notice(null);
  showIncoming();
}

function onEnded(msg) {
  if ($("elsewhere").dataset.callId === msg.call_id) showElsewhere(null);
  if (!call || call.id !== msg.call_id) {
    if (msg.reason === "glare" && !finished.has(msg.call_id)) {
      finished.add(msg.call_id);
      notice(endedMsg("glare", call), { cause: "call" });
    }
    return;
  }
  const byMe = call.byMe || Boolean(msg.ref);
  // Never trade a known cause for a generic line: ours stands if the server did not echo it.
  finishCall(endedMsg(msg.reason, { ...call, byMe }, msg.cause || call.cause));
}

/** Replies to our own actions carry their `ref`; errors for sdp/ice/ack have none. */
const CALL_ACTIONS = new Set(["accept", "reject", "hangup", "hangup-elsewhere"]);

function onError(msg) {
  if (msg.code === "resume_gap") return syncCall(signaling.welcome && signaling.welcome.call, "gap");
  const text = errorMsg(msg.code);
  if (msg.ref === "invite") {
    dropInvite();
    if (!call) show("home");
    return notice(text);
  }
  if (CALL_ACTIONS.has(msg.ref)) {
    // The call ended just before our action arrived: its real ending is already on screen.
    if (!call || (msg.call_id && msg.call_id !== call.id)) return;
    if (msg.ref === "accept") $("accept").disabled = false;
    return notice(text);
  }
  if (!msg.ref) return console.warn("server error", msg.code, msg.message);
  notice(text);
}

function onPeerLink(msg, away) {
  if (!call || call.id !== msg.call_id) return;
  say($("peer-reconnecting"), phrase("call.peer_reconnecting", { peer: call.peer }));
  $("peer-reconnecting").hidden = !away;
  if (call.session) call.session.setPeerAway(away);
}

function onMessage(msg) {
  const forCall = call && call.id === msg.call_id;
  switch (msg.type) {
    case "call.created": return onCreated(msg);
    case "call.ringing":
      if (forCall && call.state === "ringing") ringback();
      return;
    case "call.incoming": return onIncoming(msg);
    case "call.accepted": return onAccepted(msg);
    case "sdp":
      if (forCall && call.session) call.session.onSdp(msg.description);
      return;
    case "ice":
      if (forCall && call.session) call.session.onIce(msg.candidate);
      return;
    case "peer.reconnecting": return onPeerLink(msg, true);
    case "peer.reconnected": return onPeerLink(msg, false);
    case "call.ended": return onEnded(msg);
    case "error": return onError(msg);
  }
}

// -------------------------------------------------------------------------------------- wire

/** The last server messages seen (types; errors as `error.<code>`), for diagnostics and tests. */
const events = [];
function seen(type) {
  events.push(type);
  if (events.length > 200) events.shift();
}

signaling.addEventListener("message", (e) => {
  const msg = e.detail;
  seen(msg.type === "error" ? `error.${msg.code}` : msg.type);
  onMessage(msg);
});
signaling.addEventListener("state", (e) => {
  $("link").dataset.state = e.detail;
  say($("link"), phrase(`link.${e.detail}`));
  if (e.detail === "online") causeGone("offline");
});
signaling.addEventListener("welcome", (e) => {
  const w = e.detail;
  seen(w.resumed ? "welcome.resumed" : "welcome");
  syncCall(w.call, w.resumed ? "resumed" : "fresh");
});
signaling.addEventListener("revoked", () => loggedOut(phrase("error.session_revoked")));
signaling.addEventListener("superseded", () => {
  // The connection (and its call) now lives in another window: let go without hanging up.
  if (call) finished.add(call.id);
  cleanupCall();
  show("home");
  notice(phrase("notice.superseded"));
});

// Leaving the page. We deliberately do NOT hang up on `pagehide`: a reload fires it too, and a
// reload must keep the call (this tab's sessionStorage keeps the login, the resume token, the
// last seq and the call snapshot, and the new page rejoins). The browser closes the socket with
// 1001 "going away"; the server holds the connection only for a short grace, so when the tab
// really closed the peer gets `call.ended connection_lost` a few seconds later.
// Only an explicit "Log out" closes with 1000 ("the user left"), after hanging up.
$("logout").addEventListener("click", async () => {
  if (call) hangup();
  signaling.stop(1000);
  await api.logout().catch(() => {});
  loggedOut(null);
});

$("auth-form").addEventListener("submit", (e) => {
  e.preventDefault();
  authSubmit(false);
});
$("register").addEventListener("click", () => authSubmit(true));
$("call-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const to = $("call-to").value.trim();
  if (to) placeCall(to);
});
$("cancel").addEventListener("click", hangup);
$("hangup").addEventListener("click", hangup);
$("accept").addEventListener("click", acceptCall);
$("end-elsewhere").addEventListener("click", endElsewhere);
$("reject").addEventListener("click", rejectCall);
$("mute").addEventListener("click", toggleMute);
$("mic-select").addEventListener("change", chooseMicrophone);
$("history-refresh").addEventListener("click", () => loadHistory());
$("sessions-refresh").addEventListener("click", loadSessions);
$("sign-out-others").addEventListener("click", signOutOthers);
$("notify-on").addEventListener("click", enableNotifications);
$("notify-later").addEventListener("click", () => {
  localStorage.setItem(NOTIFY_LATER_KEY, "1");
  $("notify-ask").hidden = true;
});
$("lang").addEventListener("click", () => setLang(currentLang() === "en" ? "ru" : "en"));
for (const id of ["auth-username", "auth-password"]) $(id).addEventListener("input", () => ($("auth-error").hidden = true));
onLangChange(() => {
  // Text built from data is rebuilt; the switch itself names the other language in that language.
  $("lang").lang = currentLang() === "en" ? "ru" : "en";
  if (api.loggedIn) {
    renderHistory();
    renderSessions();
  }
  if (call && call.session) fillMicrophones();
  if (call) attention.retitle(call);
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && call && !$("screen-incoming").hidden) $("reject").click();
});

// A small view for diagnostics and the browser tests (WebDriver execute/sync reads it).
// `window.callsignal` is the original name; `window.__callsignal` is the same object.
const screen = () => SCREENS.find((s) => !$(`screen-${s}`).hidden) || null;
const pc = () => (call && call.session && call.session.pc ? call.session.pc : null);
const hooks = {
  screen,
  callId: () => (call ? call.id : null),
  code: () => (call && call.session ? call.session.code : null),
  pcState: () => (pc() ? pc().connectionState : null),
  bytesReceived: () => (call && call.session ? call.session.bytesReceived() : 0),
  link: () => $("link").dataset.state,
  events: () => events.slice(),
  state: () => ({
    screen: screen(),
    callId: call ? call.id : null,
    callState: call ? call.state : null,
    role: call ? call.role : null,
    peer: call ? call.peer : null,
    code: call && call.session ? call.session.code : null,
    codeNote: $("verify-note").hidden ? null : $("verify-note").textContent,
    lastSeq: signaling.lastSeq,
    notice: $("notice").hidden ? null : $("notice").textContent,
    pcState: pc() ? pc().connectionState : null,
    iceState: pc() ? pc().iceConnectionState : null,
    phase: $("screen-incall").dataset.phase || null,
    callText: $("call-state").textContent,
    peerReconnecting: !$("peer-reconnecting").hidden,
    link: $("link").dataset.state,
    lang: currentLang(),
    muted: $("mute").dataset.muted === "true",
    quality: $("quality").dataset.level,
    qualityWarning: !$("quality-warn").hidden,
  }),
  /** The device id of the microphone the call sends. */
  microphone: () => (call && call.session ? call.session.microphoneId() : null),
  /** Ringtone/ringback, title, icon and notifications (see attention.js). */
  attention: () => attention.state(),
  /** Strings missing from one of the languages (must be none). */
  missingStrings: () => missingKeys(),
  /** Pretends the connection measures {rtt, loss} (null: measure for real again). */
  fakeQuality: (q) => {
    quality.override = q;
  },
  /** Drops the socket like a network failure (close 4000: the long grace, then resume). */
  dropSocket: () => signaling.simulateNetworkDrop(),
  /** Closes the socket with `code` (1000, or 3000–4999); 1000 = the user left, no reconnect. */
  closeSocket: (code) => signaling.closeSocket(code),
  /** Makes microphone requests fail with a DOMException of this name ("NotAllowedError", "NotFoundError"); null undoes. */
  failMicrophone: (name) => simulateMicrophoneFailure(name),
};
window.callsignal = hooks;
window.__callsignal = hooks;

// Boot: the page's language first, then a refresh token in this tab's storage means we were
// logged in before the reload.
applyStatic();
// Outside a secure context (plain HTTP from another host) browsers give a page no microphone
// and no WebCrypto: say so up front instead of failing at the first call.
$("insecure").hidden = window.isSecureContext;
$("lang").lang = currentLang() === "en" ? "ru" : "en";
say($("link"), phrase("link.offline"));
showMuted(false);
if (api.hasRefresh()) {
  api.refresh().then(() => loggedIn(), () => show("auth"));
} else {
  show("auth");
}
