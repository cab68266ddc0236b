// Connection quality from RTCPeerConnection.getStats(): round-trip time and packet loss of the
// audio path, turned into good / fair / poor.
// Thresholds follow ITU-T G.114's guidance that one-way delay under 150 ms is fine for speech
// and over 400 ms unacceptable (round trip ≈ twice that), and the common observation that Opus
// stays clear up to a few percent of loss but breaks up beyond about 5–10 %.

/** Round trip (ms) and loss (%) above which the call is "fair" / "poor". */
const FAIR = { rtt: 300, loss: 3 };
const POOR = { rtt: 800, loss: 10 };

/** Turns (rtt ms, loss %) into good | fair | poor. */
export function classify(rtt, loss) {
  if (rtt >= POOR.rtt || loss >= POOR.loss) return "poor";
  if (rtt >= FAIR.rtt || loss >= FAIR.loss) return "fair";
  return "good";
}

/**
 * Samples one connection. Loss is measured between two samples (packets lost / expected since
 * the previous one), so an old burst does not keep the warning up once it is over.
 */
export class QualityProbe {
  constructor() {
    this.prev = null;
    this.override = null; // tests: {rtt, loss}
  }

  async sample(pc) {
    if (this.override) return { ...this.override, level: classify(this.override.rtt, this.override.loss) };
    if (!pc) return null;
    const stats = await pc.getStats();
    let rtt = null;
    let lost = 0;
    let received = 0;
    stats.forEach((s) => {
      if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded" && s.currentRoundTripTime != null) {
        rtt = s.currentRoundTripTime * 1000;
      }
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        lost += s.packetsLost || 0;
        received += s.packetsReceived || 0;
      }
      // What the peer reports about our outgoing audio.
      if (s.type === "remote-inbound-rtp" && s.kind === "audio" && rtt == null && s.roundTripTime != null) {
        rtt = s.roundTripTime * 1000;
      }
    });
    const prev = this.prev;
    this.prev = { lost, received };
    if (rtt == null) return null;
    let loss = 0;
    if (prev) {
      const dLost = Math.max(0, lost - prev.lost);
      const dRecv = Math.max(0, received - prev.received);
      loss = dLost + dRecv > 0 ? (100 * dLost) / (dLost + dRecv) : 0;
    }
    return { rtt: Math.round(rtt), loss: Math.round(loss * 10) / 10, level: classify(rtt, loss) };
  }
}
