// The verification code both parties compare aloud. It is derived from the DTLS fingerprints of
// the local and the remote description: the browser checks the DTLS handshake against the remote
// fingerprint it received, so a signaling server that substitutes its own fingerprint (to sit in
// the middle) changes what one side hashes, and the two codes no longer match.

/** `alg VALUE` for every `a=fingerprint:` line of an SDP, normalised and de-duplicated. */
export function fingerprints(sdp) {
  const found = new Set();
  for (const line of sdp.split(/\r?\n/)) {
    const m = /^a=fingerprint:(\S+)\s+([0-9A-Fa-f:]+)\s*$/.exec(line);
    if (m) found.add(`${m[1].toLowerCase()} ${m[2].toUpperCase()}`);
  }
  return [...found].sort().join(",");
}

/** Six digits from SHA-256 over the two sides' fingerprints, in sorted order. */
export async function verificationCode(localSdp, remoteSdp) {
  const sides = [fingerprints(localSdp), fingerprints(remoteSdp)];
  if (!sides[0] || !sides[1]) return null;
  sides.sort();
  const data = new TextEncoder().encode(`callsignal-verify-v1\n${sides[0]}\n${sides[1]}`);
  const digest = await crypto.subtle.digest("SHA-256", data);
  const n = new DataView(digest).getUint32(0) % 1_000_000;
  return String(n).padStart(6, "0");
}

/** `123 456` */
export function formatCode(code) {
  return code ? `${code.slice(0, 3)} ${code.slice(3)}` : "— — —";
}
