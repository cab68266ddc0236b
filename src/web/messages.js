// What the page says about server errors and call endings: one sentence per error code and per
// `call.ended` reason (docs/protocol.md), as msg() values rendered in the page's language.

import { msg, has } from "./i18n.js";
import { microphoneCause } from "./call.js";

/** "Please wait 30 seconds." from a Retry-After in seconds (minutes from two minutes up). */
export function waitMsg(seconds) {
  if (seconds == null || seconds <= 0) return msg("wait.little");
  if (seconds >= 120) return msg("wait.minutes", { n: Math.ceil(seconds / 60) });
  return msg("wait.seconds", { n: Math.ceil(seconds) });
}

/**
 * The sentence for a server error `code`. `retryAfter` (seconds) adds how long to wait;
 * `password` (what was typed) tells which password rule `weak_password` refers to: the server
 * answers one code for every rule (contract §1), so the page checks the length itself.
 */
export function errorMsg(code, { retryAfter = null, password = null } = {}) {
  if (code === "weak_password") {
    const n = password == null ? 8 : [...password].length; // Unicode scalar values, as the server counts
    const rule = n < 8 ? "short" : n > 128 ? "long" : "common";
    return msg(`error.weak_password.${rule}`);
  }
  const key = has(`error.${code}`) ? `error.${code}` : "error.http_error";
  const waits = ["too_many_attempts", "rate_limited", "server_busy", "unavailable"].includes(code);
  return waits ? [msg(key), waitMsg(retryAfter)] : msg(key);
}

/** The part of the sentence key that says which side this page is on. */
function causeSide(reason, c) {
  switch (reason) {
    case "rejected": return c.role === "caller" ? "rejected_caller" : "rejected_callee";
    case "cancelled": return c.role === "caller" ? "cancelled_caller" : "cancelled_callee";
    case "hangup": return c.byMe ? "hangup_me" : "hangup_peer";
    default: return null;
  }
}

/**
 * Why the call ended, for this side. `c`: the page's call ({peer, role, byMe}) or null;
 * `cause`: a microphone problem (`microphone_denied` / `microphone_unavailable`) or null.
 */
export function endedMsg(reason, c, cause = null) {
  const peer = c ? c.peer : null;
  const p = { peer: peer || "—" };
  const side = c && cause ? causeSide(reason, c) : null;
  if (side && has(`cause.${side}.${cause}`)) return msg(`cause.${side}.${cause}`, p);
  const caller = c && c.role === "caller";
  switch (reason) {
    case "hangup": return msg(c && c.byMe ? "ended.hangup_me" : "ended.hangup_peer", p);
    case "cancelled": return msg(caller ? "ended.cancelled_me" : "ended.cancelled_peer", p);
    case "rejected": return msg(caller ? "ended.rejected_peer" : "ended.rejected_me", p);
    case "missed": return msg(caller ? "ended.missed_caller" : "ended.missed_callee", p);
    case "busy":
    case "unavailable":
    case "answered_elsewhere":
    case "left":
    case "connection_lost":
    case "glare":
    case "server_shutdown":
    case "server_restart":
    case "server_error":
      return msg(`ended.${reason}`, p);
    default:
      return msg("ended.unknown");
  }
}

/** The caller's own microphone failed before the invite: no call was placed. */
export function micRefusedMsg(error) {
  return msg(microphoneCause(error) === "microphone_denied" ? "mic.refused_denied" : "mic.refused_unavailable");
}
