// Turn RTCPeerConnection.getStats() into the few numbers a person wants to see.

export async function readStats(pc, previous = null) {
  const report = await pc.getStats();
  const now = performance.now();
  const out = { at: now, framesDecoded: 0, framesSent: 0, framesDropped: 0, rttMs: null,
                fpsIn: null, fpsOut: null, width: null, height: null };
  let pairId = null;
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") {
      out.framesDecoded = s.framesDecoded ?? 0;
      out.framesDropped = s.framesDropped ?? 0;
      out.fpsIn = s.framesPerSecond ?? null;
      out.width = s.frameWidth ?? null;
      out.height = s.frameHeight ?? null;
    } else if (s.type === "outbound-rtp" && s.kind === "video") {
      out.framesSent = s.framesSent ?? 0;
      out.fpsOut = s.framesPerSecond ?? null;
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
  }
  return out;
}
