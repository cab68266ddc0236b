// The callsignal browser client: screens, call flow and the glue between the REST API,
// the signaling socket and the WebRTC call. All text is inserted with textContent.

import { Api, ApiError } from "./api.js";
import { Signaling } from "./signaling.js";
import { CallSession, Ringtone } from "./call.js";
import { formatCode } from "./verify.js";

const $ = (id) => document.getElementById(id);
const api = new Api();
const signaling = new Signaling(api);
const ringtone = new Ringtone();

/** The call on screen: {id, peer, role, session, startedAt, byMe} or null. */
let call = null;
let pendingInvite = null;
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

function endedText(reason, c) {
  const peer = c ? c.peer : "The other person";
  const caller = c && c.role === "caller";
  switch (reason) {
    case "hangup": return c && c.byMe ? "You ended the call." : `${peer} ended the call.`;
    case "cancelled": return caller ? "You cancelled the call." : `${peer} cancelled the call.`;
    case "rejected": return caller ? `${peer} declined the call.` : "You declined the call.";
    case "missed": return caller ? `${peer} did not answer.` : `You missed a call from ${peer}.`;
    case "busy": return `${peer} is on another call.`;
    case "unavailable": return `${peer} is not online right now.`;
    case "answered_elsewhere": return "The call was answered on another of your devices.";
    case "connection_lost": return `The connection to ${peer} was lost.`;
    case "glare": return `You and ${peer} called each other at the same time — answer their call instead.`;
    case "server_shutdown": return "The server is restarting. Please call again in a moment.";
    case "server_restart": return "The call was interrupted by a server restart.";
    case "server_error": return "The call failed because of a server error.";
    default: return "The call ended.";
  }
}

const SHORT_REASON = {
  hangup: "ended", cancelled: "cancelled", rejected: "declined", missed: "missed", busy: "busy",
  unavailable: "offline", answered_elsewhere: "answered elsewhere", connection_lost: "connection lost",
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

function placeCall(to) {
  if (call || pendingInvite) return;
  notice("");
  pendingInvite = to;
  $("out-title").textContent = to;
  $("out-state").textContent = "Connecting…";
  show("outgoing");
  if (!signaling.send({ type: "call.invite", to, ref: "invite" })) {
    pendingInvite = null;
    show("home");
    notice("Not connected to the server yet. Please try again in a moment.");
  }
}

function cleanupCall() {
  ringtone.stop();
  clearInterval(timer);
  timer = null;
  if (call && call.session) call.session.close();
  call = null;
  pendingInvite = null;
  $("peer-reconnecting").hidden = true;
  $("mute").setAttribute("aria-pressed", "false");
  $("mute").textContent = "Mute";
  $("verify-code").textContent = formatCode(null);
  $("call-state").textContent = "connecting…";
}

async function startMedia() {
  const session = new CallSession({
    signaling,
    callId: call.id,
    iceServers: signaling.welcome ? signaling.welcome.ice_servers : [],
    role: call.role,
    audioElement: $("remote-audio"),
  });
  call.session = session;
  session.addEventListener("state", (e) => {
    const words = { new: "connecting…", connecting: "connecting…", connected: "connected · encrypted", disconnected: "connection interrupted…", failed: "connection failed — the network blocked the call, or the keys did not match", closed: "closed" };
    $("call-state").textContent = words[e.detail] || e.detail;
    $("screen-incall").dataset.pcState = e.detail;
  });
  session.addEventListener("code", (e) => {
    $("verify-code").textContent = formatCode(e.detail);
    $("verify-code").dataset.code = e.detail;
  });
  session.addEventListener("levels", (e) => {
    $("meter-in").value = e.detail.local;
    $("meter-out").value = e.detail.remote;
  });
  try {
    await session.start();
  } catch (e) {
    notice(`Microphone unavailable: ${e.message}`);
    signaling.send({ type: "call.hangup", call_id: call.id });
  }
}

function onMessage(msg) {
  switch (msg.type) {
    case "call.created":
      pendingInvite = null;
      call = { id: msg.call_id, peer: msg.to.username, role: "caller", session: null, byMe: false };
      $("out-title").textContent = call.peer;
      $("out-state").textContent = "Calling…";
      break;
    case "call.ringing":
      if (call && call.id === msg.call_id) $("out-state").textContent = "Ringing…";
      break;
    case "call.incoming":
      if (call) return;
      call = { id: msg.call_id, peer: msg.from.username, role: "callee", session: null, byMe: false };
      notice("");
      $("in-title").textContent = call.peer;
      show("incoming");
      ringtone.start();
      break;
    case "call.accepted":
      if (!call || call.id !== msg.call_id) return;
      ringtone.stop();
      $("call-peer").textContent = call.peer;
      call.startedAt = Date.now();
      $("call-timer").textContent = "0:00";
      timer = setInterval(() => ($("call-timer").textContent = duration(Date.now() - call.startedAt)), 1000);
      show("incall");
      startMedia();
      break;
    case "sdp":
      if (call && call.session && call.id === msg.call_id) call.session.onSdp(msg.description);
      break;
    case "ice":
      if (call && call.session && call.id === msg.call_id) call.session.onIce(msg.candidate);
      break;
    case "peer.reconnecting":
      if (call && call.id === msg.call_id) $("peer-reconnecting").hidden = false;
      break;
    case "peer.reconnected":
      if (call && call.id === msg.call_id) $("peer-reconnecting").hidden = true;
      break;
    case "call.ended": {
      if (!call || call.id !== msg.call_id) {
        if (!call) notice(endedText(msg.reason, { peer: pendingInvite || "The other person", role: "caller" }));
        pendingInvite = null;
        if (!call) show("home");
        loadHistory(msg.call_id);
        return;
      }
      const text = endedText(msg.reason, call);
      cleanupCall();
      show("home");
      notice(text);
      loadHistory(msg.call_id);
      break;
    }
    case "error":
      if (pendingInvite && msg.ref === "invite") {
        pendingInvite = null;
        show("home");
      }
      notice(ERRORS[msg.code] || msg.message);
      break;
  }
}

function hangup() {
  if (!call) {
    pendingInvite = null;
    show("home");
    return;
  }
  call.byMe = true;
  signaling.send({ type: "call.hangup", call_id: call.id });
}

// -------------------------------------------------------------------------------------- wire

/** The last server messages seen (types only), for diagnostics and the browser tests. */
const events = [];
function seen(type) {
  events.push(type);
  if (events.length > 200) events.shift();
}

signaling.addEventListener("message", (e) => {
  seen(e.detail.type);
  onMessage(e.detail);
});
signaling.addEventListener("state", (e) => {
  $("link").dataset.state = e.detail;
  $("link").textContent = e.detail;
});
signaling.addEventListener("welcome", (e) => {
  seen(e.detail.resumed ? "welcome.resumed" : "welcome");
  if (!e.detail.resumed && call) {
    // The server did not keep our connection: the call is gone.
    const text = endedText("connection_lost", call);
    cleanupCall();
    show("home");
    notice(text);
  }
});
signaling.addEventListener("revoked", () => loggedOut("Your session has ended. Please log in again."));

$("auth-form").addEventListener("submit", (e) => {
  e.preventDefault();
  authSubmit(false);
});
$("register").addEventListener("click", () => authSubmit(true));
$("logout").addEventListener("click", async () => {
  await api.logout().catch(() => {});
  loggedOut("");
});
$("call-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const to = $("call-to").value.trim();
  if (to) placeCall(to);
});
$("cancel").addEventListener("click", hangup);
$("hangup").addEventListener("click", hangup);
$("accept").addEventListener("click", () => {
  if (!call) return;
  ringtone.stop();
  signaling.send({ type: "call.accept", call_id: call.id });
});
$("reject").addEventListener("click", () => {
  if (!call) return;
  ringtone.stop();
  call.byMe = true;
  signaling.send({ type: "call.reject", call_id: call.id });
});
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

// A small read-only view for diagnostics and the browser tests.
window.callsignal = {
  screen: () => SCREENS.find((s) => !$(`screen-${s}`).hidden),
  callId: () => (call ? call.id : null),
  code: () => (call && call.session ? call.session.code : null),
  pcState: () => (call && call.session && call.session.pc ? call.session.pc.connectionState : null),
  bytesReceived: () => (call && call.session ? call.session.bytesReceived() : 0),
  link: () => $("link").dataset.state,
  dropSocket: () => signaling.simulateNetworkDrop(),
  events: () => events.slice(),
};

// Boot: a refresh token in this tab's storage means we were logged in before the reload.
if (api.hasRefresh()) {
  api.refresh().then(loggedIn, () => show("auth"));
} else {
  show("auth");
}
