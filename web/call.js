// One call: camera track out, avatar track back, telemetry on a data channel.
// Signalling is non-trickle: the offer is sent once ICE gathering completes.

import { sendOffer } from "./api.js";

const GATHER_TIMEOUT_MS = 3000;
// Heartbeat on the telemetry channel: the server frees a session whose pings stop (a closed
// laptop, a dropped network) within seconds instead of waiting ~30 s for ICE to fail.
const HEARTBEAT_MS = 2000;

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      pc.removeEventListener("icegatheringstatechange", check);
      clearTimeout(timer);
      resolve();
    };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    // Gathering can hang on unreachable STUN servers; what we have by then will do.
    const timer = setTimeout(done, GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

export class Call extends EventTarget {
  constructor(session, cameraStream) {
    super();
    this.session = session;
    this.camera = cameraStream;
    this.pc = new RTCPeerConnection({ iceServers: session.ice_servers });
    this.remote = null;
    this.telemetry = { frames: 0, face: null, serverMs: [], maxFps: null };
    this.channel = this.pc.createDataChannel("telemetry");
    this.channel.addEventListener("message", (event) => this.#onTelemetry(event.data));
    this.heartbeat = null;
    this.channel.addEventListener("open", () => {
      this.#ping();
      this.heartbeat = setInterval(() => this.#ping(), HEARTBEAT_MS);
    });
    this.channel.addEventListener("close", () => clearInterval(this.heartbeat));
    this.pc.addEventListener("track", (event) => {
      this.remote = event.streams[0] ?? new MediaStream([event.track]);
      this.dispatchEvent(new CustomEvent("remote", { detail: this.remote }));
    });
    this.pc.addEventListener("connectionstatechange", () => {
      this.dispatchEvent(new CustomEvent("state", { detail: this.pc.connectionState }));
    });
  }

  async start() {
    this.addMedia();
    await this.pc.setLocalDescription(await this.pc.createOffer());
    await gathered(this.pc);
    const answer = await sendOffer(this.session, this.pc.localDescription.sdp);
    await this.pc.setRemoteDescription({ type: "answer", sdp: answer });
  }

  /** What the offer carries: the camera out, the server's video back. */
  addMedia() {
    const [video] = this.camera.getVideoTracks();
    this.pc.addTransceiver(video, { direction: "sendrecv", streams: [this.camera] });
  }

  recentre() {
    if (this.channel.readyState === "open") this.channel.send(JSON.stringify({ type: "reset" }));
  }

  #ping() {
    if (this.channel.readyState === "open") {
      this.channel.send(JSON.stringify({ type: "ping", t: performance.now() }));
    }
  }

  #onTelemetry(data) {
    let message;
    try { message = JSON.parse(data); } catch { return; }
    if (message.type === "end") {  // the server is ending the session, and says why
      this.dispatchEvent(new CustomEvent("end", { detail: message }));
      return;
    }
    if (message.type === "rate") {
      this.#limitRate(message.max_fps);
      return;
    }
    if (message.type !== "frame") return;
    this.telemetry.frames += 1;
    this.telemetry.face = message.face;
    this.telemetry.serverMs.push(message.server_ms);
    if (this.telemetry.serverMs.length > 60) this.telemetry.serverMs.shift();
    this.dispatchEvent(new CustomEvent("telemetry", { detail: message }));
  }

  /** The server renders fewer frames than the camera makes: send no more than it can use. */
  async #limitRate(maxFps) {
    const sender = this.pc.getSenders().find((s) => s.track?.kind === "video");
    if (!sender || !Number.isFinite(maxFps) || maxFps <= 0) return;
    const parameters = sender.getParameters();
    if (!parameters.encodings?.length) return;
    parameters.encodings[0].maxFramerate = maxFps;
    try {
      await sender.setParameters(parameters);
      this.telemetry.maxFps = maxFps;
    } catch (error) {
      console.warn("could not limit the frame rate", error);
    }
  }

  close() {
    clearInterval(this.heartbeat);
    try { this.channel.close(); } catch { /* already closed */ }
    this.pc.close();
  }
}
