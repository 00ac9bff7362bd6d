// Turn RTCPeerConnection.getStats() into the few numbers a person wants to see.
// Bitrates are deltas of the RTP byte counters between two calls (payload, no headers).

export async function readStats(pc, previous = null) {
  const report = await pc.getStats();
  const now = performance.now();
  const out = { at: now, framesDecoded: 0, framesSent: 0, framesDropped: 0, rttMs: null,
                fpsIn: null, fpsOut: null, width: null, height: null,
                bytesSent: 0, bytesReceived: 0, kbpsOut: null, kbpsIn: null };
  let pairId = null;
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") {
      out.framesDecoded = s.framesDecoded ?? 0;
      out.framesDropped = s.framesDropped ?? 0;
      out.fpsIn = s.framesPerSecond ?? null;
      out.bytesReceived = s.bytesReceived ?? 0;
      out.width = s.frameWidth ?? null;
      out.height = s.frameHeight ?? null;
    } else if (s.type === "outbound-rtp" && s.kind === "video") {
      out.framesSent = s.framesSent ?? 0;
      out.fpsOut = s.framesPerSecond ?? null;
      out.bytesSent = s.bytesSent ?? 0;
    } else if (s.type === "transport" && s.selectedCandidatePairId) {
      pairId = s.selectedCandidatePairId;
    }
  });
  report.forEach((s) => {
    const selected = pairId ? s.id === pairId : s.nominated && s.state === "succeeded";
    if (s.type === "candidate-pair" && selected && s.currentRoundTripTime !== undefined) {
      out.rttMs = s.currentRoundTripTime * 1000;
    }
  });
  // framesPerSecond is missing on some builds: fall back to counting.
  if (previous) {
    const dt = (now - previous.at) / 1000;
    if (out.fpsIn === null && dt > 0) out.fpsIn = (out.framesDecoded - previous.framesDecoded) / dt;
    if (out.fpsOut === null && dt > 0) out.fpsOut = (out.framesSent - previous.framesSent) / dt;
    // What the webcam's own video costs on the wire, and what comes back.
    if (dt > 0) {
      out.kbpsOut = (8 * (out.bytesSent - previous.bytesSent)) / dt / 1000;
      out.kbpsIn = (8 * (out.bytesReceived - previous.bytesReceived)) / dt / 1000;
    }
  }
  return out;
}
