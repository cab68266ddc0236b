// The callsignal browser client: screens, call flow and the glue between the REST API,
// the signaling socket and the WebRTC call. All text is inserted with textContent.

import { Api, ApiError } from "./api.js";
import { Signaling } from "./signaling.js";
import { CallSession, Ringtone, getMicrophone, microphoneCause, simulateMicrophoneFailure } from "./call.js";
import { formatCode } from "./verify.js";

const $ = (id) => document.getElementById(id);
const api = new Api();
const signaling = new Signaling(api);
const ringtone = new Ringtone();

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

const SCREENS = ["auth", "home", "outgoing", "incoming", "incall"];

function show(name) {
  for (const s of SCREENS) $(`screen-${s}`).hidden = s !== name;
  const focus = { auth: "auth-username", home: "call-to", outgoing: "cancel", incoming: "accept", incall: "hangup" }[name];
  if (focus) $(focus).focus();
}

function notice(text) {
  const n = $("notice");
  n.textContent = text || "";
  n.hidden = !text;
}

/** Why the verification code changed (shown beside the code). */
function codeNote(text) {
  $("verify-note").textContent = text || "";
  $("verify-note").hidden = !text;
}

const ERRORS = {
  user_not_found: "There is no user with that name.",
  busy_self: "You are already in a call.",
  rate_limited: "Too many attempts. Please wait a little.",
  persistence_unavailable: "Calls are temporarily unavailable. Please try again shortly.",
  bad_message: "That request was not understood.",
  not_participant: "You are not part of that call.",
  call_not_ringing: "That call is no longer ringing.",
  call_not_active: "The call is not connected yet.",
  unknown_call: "That call has already ended.",
  internal_error: "Something went wrong on the server. Please try again.",
  too_many_connections: "Too many open windows for this account.",
  invalid_username: "Usernames are 3–32 characters: letters, digits, '_', '.' or '-'.",
  weak_password: "Choose a longer or less common password (8–128 characters).",
  username_taken: "That username is taken.",
  invalid_credentials: "Wrong username or password.",
  too_many_attempts: "Too many failed attempts. Please wait before trying again.",
};

/** The `cause` of call.reject / call.hangup / call.ended, in words for each side. */
const CAUSES = {
  microphone_denied: {
    you: "the microphone is blocked",
    they: "their microphone is blocked",
    fix: "Allow microphone access for this site in your browser's settings",
  },
  microphone_unavailable: {
    you: "no microphone is available",
    they: "they have no working microphone",
    fix: "Connect a microphone",
  },
};

/** What a call that ended with `cause` (a microphone problem) means for this side, or null. */
function causeText(reason, c, cause) {
  const why = CAUSES[cause];
  if (!why) return null;
  const peer = c.peer;
  switch (reason) {
    case "rejected":
      return c.role === "caller" ? `${peer} could not answer: ${why.they}.` : `You declined because ${why.you}. ${why.fix}, then ask ${peer} to call again.`;
    case "cancelled":
      return c.role === "caller" ? `You cancelled because ${why.you}. ${why.fix}, then call again.` : `${peer} cancelled the call: ${why.they}.`;
    case "hangup":
      return c.byMe ? `The call ended because ${why.you}. ${why.fix}, then call again.` : `${peer} hung up: ${why.they}.`;
    default:
      return null;
  }
}

function endedText(reason, c, cause = null) {
  const peer = c ? c.peer : "The other person";
  const caller = c && c.role === "caller";
  const withCause = c && causeText(reason, c, cause);
  if (withCause) return withCause;
  switch (reason) {
    case "hangup": return c && c.byMe ? "You ended the call." : `${peer} ended the call.`;
    case "cancelled": return caller ? "You cancelled the call." : `${peer} cancelled the call.`;
    case "rejected": return caller ? `${peer} declined the call.` : "You declined the call.";
    case "missed": return caller ? `${peer} did not answer.` : `You missed a call from ${peer}.`;
    case "busy": return `${peer} is on another call.`;
    case "unavailable": return `${peer} is not online right now.`;
    case "answered_elsewhere": return "The call was answered on another of your devices.";
    case "left": return `${peer} left the call.`;
    case "connection_lost": return `The connection to ${peer} was lost.`;
    case "glare": return `You and ${peer} called each other at the same time — answer their call instead.`;
    case "server_shutdown": return "The server is restarting. Please call again in a moment.";
    case "server_restart": return "The call was interrupted by a server restart.";
    case "server_error": return "The call failed because of a server error.";
    default: return "The call ended.";
  }
}

/** The caller's own microphone failed before the invite: no call was placed. */
function micRefusedText(error) {
  return microphoneCause(error) === "microphone_denied"
    ? "Your microphone is blocked, so the call was not placed. Allow microphone access for this site in your browser's settings, then call again."
    : `No microphone is available (${error.message || error.name}), so the call was not placed. Connect a microphone, then call again.`;
}

const SHORT_REASON = {
  hangup: "ended", cancelled: "cancelled", rejected: "declined", missed: "missed", busy: "busy",
  unavailable: "offline", answered_elsewhere: "answered elsewhere", left: "left", connection_lost: "connection lost",
  glare: "crossed calls", server_shutdown: "server restart", server_restart: "server restart", server_error: "server error",
};

/** "Chrome on Linux" from a User-Agent string. */
function deviceName(ua) {
  if (!ua) return "Unknown device";
  const browser = [["Edg/", "Edge"], ["Firefox/", "Firefox"], ["Chrome/", "Chrome"], ["Safari/", "Safari"]].find(([k]) => ua.includes(k));
  const os = [["Android", "Android"], ["iPhone", "iPhone"], ["iPad", "iPad"], ["Windows", "Windows"], ["Mac OS", "macOS"], ["Linux", "Linux"]].find(([k]) => ua.includes(k));
  if (!browser && !os) return ua.slice(0, 40);
  return `${browser ? browser[1] : "Browser"} on ${os ? os[1] : "unknown system"}`;
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
    loggedIn();
  } catch (e) {
    err.textContent = e instanceof ApiError ? ERRORS[e.code] || e.message : "Could not reach the server.";
    err.hidden = false;
  } finally {
    for (const b of [$("login"), $("register")]) b.disabled = false;
  }
}

function loggedIn() {
  $("whoami").textContent = `Signed in as ${api.user.username}`;
  $("whoami").hidden = false;
  $("logout").hidden = false;
  notice("");
  show("home");
  signaling.start();
  loadHistory();
  loadSessions();
}

function loggedOut(message) {
  cleanupCall();
  showElsewhere(null);
  signaling.stop();
  api.forget();
  $("whoami").hidden = true;
  $("logout").hidden = true;
  show("auth");
  notice(message || "");
}

/**
 * Shows the call history. `endedId`: a call that just ended; its record is written a moment
 * after `call.ended` is sent, so the list is fetched again until it shows the call as ended.
 */
async function loadHistory(endedId = null, attempt = 0) {
  const list = $("history");
  try {
    const { calls } = await api.calls(20);
    const pending = endedId && !calls.some((c) => c.id === endedId && c.status === "ended");
    if (pending && attempt < 10) setTimeout(() => loadHistory(endedId, attempt + 1), 200 * (attempt + 1));
    list.replaceChildren(
      ...calls.map((c) => {
        const li = document.createElement("li");
        const outgoing = c.caller.id === api.user.id;
        const who = document.createElement("span");
        who.textContent = `${outgoing ? "↗" : "↙"} ${outgoing ? c.callee.username : c.caller.username}`;
        const meta = document.createElement("span");
        meta.className = "meta";
        const when = new Date(c.created_at).toLocaleString();
        const what = c.status === "ended" ? SHORT_REASON[c.end_reason] || c.end_reason : c.status;
        meta.textContent = `${what}${c.duration_ms != null ? ` · ${duration(c.duration_ms)}` : ""} · ${when}`;
        li.dataset.callId = c.id;
        li.dataset.reason = c.end_reason || "";
        li.append(who, meta);
        return li;
      }),
    );
    if (!calls.length) {
      const li = document.createElement("li");
      li.className = "meta";
      li.textContent = "No calls yet.";
      list.replaceChildren(li);
    }
  } catch (e) {
    if (e.status === 401) loggedOut("Your session has ended. Please log in again.");
  }
}

async function loadSessions() {
  const list = $("sessions");
  try {
    const { sessions } = await api.sessions();
    list.replaceChildren(
      ...sessions.map((s) => {
        const li = document.createElement("li");
        const info = document.createElement("span");
        const ua = deviceName(s.user_agent);
        info.textContent = s.current ? `This device — ${ua}` : ua;
        const meta = document.createElement("span");
        meta.className = "meta";
        meta.textContent = `last seen ${new Date(s.last_seen_at).toLocaleString()}`;
        const left = document.createElement("span");
        left.append(info, document.createElement("br"), meta);
        li.append(left);
        if (!s.current) {
          const b = document.createElement("button");
          b.type = "button";
          b.className = "ghost";
          b.textContent = "Sign out";
          b.setAttribute("aria-label", `Sign out ${ua}`);
          b.onclick = async () => {
            await api.revokeSession(s.id).catch(() => {});
            loadSessions();
          };
          li.append(b);
        }
        return li;
      }),
    );
  } catch (e) {
    if (e.status === 401) loggedOut("Your session has ended. Please log in again.");
  }
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
  for (const t of stream ? stream.getTracks() : []) t.stop();
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
  ringtone.stop();
  clearInterval(timer);
  timer = null;
  if (call) {
    if (call.session) call.session.close();
    stopStream(call.mic);
  }
  dropInvite();
  call = null;
  sessionStorage.removeItem(SNAPSHOT_KEY);
  $("peer-reconnecting").hidden = true;
  $("mute").setAttribute("aria-pressed", "false");
  $("mute").textContent = "Mute";
  $("verify-code").textContent = formatCode(null);
  delete $("verify-code").dataset.code;
  codeNote("");
  $("call-state").textContent = "connecting…";
  $("accept").disabled = false;
}

/** Leaves the call on this page: home screen, the reason, fresh history. */
function finishCall(text) {
  const id = call ? call.id : null;
  if (id) finished.add(id);
  cleanupCall();
  show("home");
  notice(text);
  loadHistory(id);
}

function showOutgoing(text) {
  $("out-title").textContent = call ? call.peer : pendingInvite.to;
  $("out-state").textContent = text;
  show("outgoing");
}

function showIncoming() {
  $("in-title").textContent = call.peer;
  $("in-state").textContent = "";
  show("incoming");
  ringtone.start();
}

/** Asks for the microphone first: without one, no invite is sent. */
async function placeCall(to) {
  if (call || pendingInvite) return;
  notice("");
  const invite = { to, mic: null, sent: false, cancelled: false };
  pendingInvite = invite;
  showOutgoing("Waiting for the microphone…");
  let mic;
  try {
    mic = await getMicrophone();
  } catch (e) {
    if (pendingInvite === invite) {
      pendingInvite = null;
      show("home");
      notice(micRefusedText(e));
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
  $("out-state").textContent = "Calling…";
  invite.sent = signaling.send({ type: "call.invite", to, ref: "invite" });
  if (!invite.sent) {
    dropInvite();
    show("home");
    notice("Not connected to the server yet. Please try again in a moment.");
  }
}

/** Asks for the microphone before answering; without one, declines and says why. */
async function acceptCall() {
  const c = call;
  if (!c || c.role !== "callee" || c.state !== "ringing" || $("accept").disabled) return;
  ringtone.stop();
  $("accept").disabled = true;
  $("in-state").textContent = "Starting the microphone…";
  let mic = live(c.mic);
  try {
    mic = mic || (await getMicrophone());
  } catch (e) {
    if (call !== c) return;
    const cause = microphoneCause(e);
    c.byMe = true;
    c.cause = cause;
    notice(endedText("rejected", c, cause));
    signaling.send({ type: "call.reject", call_id: c.id, cause, ref: "reject" });
    return;
  }
  if (call !== c || c.byMe) return stopStream(mic); // ended or declined while the browser asked
  c.mic = mic;
  $("in-state").textContent = "Connecting…";
  if (!signaling.send({ type: "call.accept", call_id: c.id, ref: "accept" })) {
    $("accept").disabled = false;
    $("in-state").textContent = "Not connected to the server. Try again in a moment.";
  }
}

function rejectCall() {
  if (!call) return;
  ringtone.stop();
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
  if (!sent) finishCall(endedText(call.state === "active" ? "hangup" : call.role === "caller" ? "cancelled" : "rejected", call));
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
  saveSnapshot();
}

const PHASE_TEXT = {
  connecting: () => "connecting…",
  connected: () => "connected · encrypted",
  interrupted: () => "Connection interrupted — reconnecting…",
  waiting: (peer) => `Waiting for ${peer} to come back…`,
  restarting: () => "The connection dropped — reconnecting…",
  "network-failed": () => "The network could not connect the call. Check your connection, or hang up and call again.",
  "encryption-failed": () =>
    "The network connected, but the encrypted connection could not be set up. If your codes differ, someone may be intercepting the call — hang up.",
};

function onStatus(detail) {
  const text = PHASE_TEXT[detail.phase] || (() => detail.pc);
  $("call-state").textContent = text(call.peer);
  $("screen-incall").dataset.pcState = detail.pc;
  $("screen-incall").dataset.phase = detail.phase;
}

/** A new code: show it, and when it replaces an earlier one of this call, say why. */
function onCode({ code, previous, why }) {
  $("verify-code").textContent = formatCode(code);
  $("verify-code").dataset.code = code;
  const before = previous || (call.rejoined && call.rejoined.code) || null;
  if (before && before !== code) {
    const fresh = "the code changed because a new encrypted connection was made — compare it again";
    if (why === "peer") codeNote(`${call.peer} reconnected; ${fresh}.`);
    else if (why === "rejoin") codeNote(`You reconnected; ${fresh} with ${call.peer}.`);
    else codeNote(`The connection was rebuilt; ${fresh} with ${call.peer}.`);
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
      mic = await getMicrophone();
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
  ringtone.stop();
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
  if (wc.state === "ringing") return wc.role === "callee" ? showIncoming() : showOutgoing("Ringing…");
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
    if (wc && wc.call_id === call.id) return finishCall("The call continues on another of your devices.");
    return finishCall(why === "gap" ? `The call with ${call.peer} ended while you were disconnected.` : endedText("connection_lost", call));
  }
  if (!mine) {
    if (pendingInvite && pendingInvite.sent && why !== "resumed") {
      dropInvite();
      show("home");
      notice("The connection dropped before the call was placed. Please call again.");
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
  if (wc) $("elsewhere-text").textContent = `You are in a call with ${wc.peer.username} in another window or on another device.`;
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
  showOutgoing("Calling…");
}

function onIncoming(msg) {
  if (call) return; // already ringing (a rejoin shows it too) or busy
  call = newCall(msg.call_id, msg.from.username, "callee", "ringing");
  notice("");
  showIncoming();
}

function onEnded(msg) {
  if ($("elsewhere").dataset.callId === msg.call_id) showElsewhere(null);
  if (!call || call.id !== msg.call_id) {
    if (msg.reason === "glare" && !finished.has(msg.call_id)) {
      finished.add(msg.call_id);
      notice(endedText("glare", call));
    }
    return;
  }
  const byMe = call.byMe || Boolean(msg.ref);
  // Never trade a known cause for a generic line: ours stands if the server did not echo it.
  finishCall(endedText(msg.reason, { ...call, byMe }, msg.cause || call.cause));
}

/** Replies to our own actions carry their `ref`; errors for sdp/ice/ack have none. */
const CALL_ACTIONS = new Set(["accept", "reject", "hangup", "hangup-elsewhere"]);

function onError(msg) {
  if (msg.code === "resume_gap") return syncCall(signaling.welcome && signaling.welcome.call, "gap");
  const text = ERRORS[msg.code] || msg.message;
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
  $("peer-reconnecting").textContent = `${call.peer} is reconnecting…`;
  $("peer-reconnecting").hidden = !away;
  if (call.session) call.session.setPeerAway(away);
}

function onMessage(msg) {
  const forCall = call && call.id === msg.call_id;
  switch (msg.type) {
    case "call.created": return onCreated(msg);
    case "call.ringing":
      if (forCall && call.state === "ringing") $("out-state").textContent = "Ringing…";
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
  $("link").textContent = e.detail;
});
signaling.addEventListener("welcome", (e) => {
  const w = e.detail;
  seen(w.resumed ? "welcome.resumed" : "welcome");
  syncCall(w.call, w.resumed ? "resumed" : "fresh");
});
signaling.addEventListener("revoked", () => loggedOut("Your session has ended. Please log in again."));
signaling.addEventListener("superseded", () => {
  // The connection (and its call) now lives in another window: let go without hanging up.
  if (call) finished.add(call.id);
  cleanupCall();
  show("home");
  notice("Another window took over this page's connection (a duplicated tab?). Reload to connect here again.");
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
  loggedOut("");
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
$("mute").addEventListener("click", () => {
  if (!call || !call.session) return;
  const muted = $("mute").getAttribute("aria-pressed") !== "true";
  call.session.setMuted(muted);
  $("mute").setAttribute("aria-pressed", String(muted));
  $("mute").textContent = muted ? "Unmute" : "Mute";
});
$("history-refresh").addEventListener("click", () => loadHistory());
$("sessions-refresh").addEventListener("click", loadSessions);
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
  }),
  /** Drops the socket like a network failure (close 4000: the long grace, then resume). */
  dropSocket: () => signaling.simulateNetworkDrop(),
  /** Closes the socket with `code` (1000, or 3000–4999); 1000 = the user left, no reconnect. */
  closeSocket: (code) => signaling.closeSocket(code),
  /** Makes microphone requests fail with a DOMException of this name ("NotAllowedError", "NotFoundError"); null undoes. */
  failMicrophone: (name) => simulateMicrophoneFailure(name),
};
window.callsignal = hooks;
window.__callsignal = hooks;

// Boot: a refresh token in this tab's storage means we were logged in before the reload.
if (api.hasRefresh()) {
  api.refresh().then(loggedIn, () => show("auth"));
} else {
  show("auth");
}
