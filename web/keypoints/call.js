// A call in session mode "keypoints-device": the face mesh runs here, and only keypoint
// messages leave the browser, on two data channels (as service/peer.py's peers use them):
//
//   keypoints-motion   unordered, maxRetransmits 0: one motion packet per tracked frame;
//   keypoints-control  reliable, ordered: keyframes, speaker bases and heartbeats out, the
//                      receiver's keyframe requests and basis acknowledgements in.
//
// The offer sends no video (a recvonly transceiver): the server renders the reconstruction
// and sends that back as video.  Bytes handed to the channels are counted here, so the page
// shows what the browser itself sent.

import { Call } from "../call.js";
import { MessageType, heartbeatBytes, messageType } from "./codec.js";
import { Sender } from "./sender.js";

export const MOTION_LABEL = "keypoints-motion";
export const CONTROL_LABEL = "keypoints-control";
const HEARTBEAT_S = 1.0; // without a face, say "still here" this often (as service/peer.py)
const MAX_BUFFERED = 16 * 1024; // motion packets are dropped, not queued, when the channel lags
const WINDOW_S = 5.0; // the rate shown is over this many seconds

/** Bytes sent, and rates over the last WINDOW_S seconds of tracked frames. */
class SentCounter {
  constructor() {
    Object.assign(this, { frames: 0, packets: 0, dropped: 0, motionBytes: 0, keyframes: 0,
                          keyframeBytes: 0, bases: 0, basisBytes: 0, otherBytes: 0,
                          requests: 0, recent: [] });
  }

  frame(now, motionBytes) {
    this.frames += 1;
    this.recent.push([now, motionBytes]);
    while (this.recent.length && now - this.recent[0][0] > WINDOW_S) this.recent.shift();
  }

  snapshot(now) {
    const recent = this.recent.filter(([t]) => now - t <= WINDOW_S);
    const bits = 8 * recent.reduce((sum, [, b]) => sum + b, 0);
    const span = recent.length > 1 ? Math.max(now - recent[0][0], 1e-3) : null;
    const afterFirst = recent.length > 1 ? bits - 8 * recent[0][1] : 0;
    return {
      kbps: span ? afterFirst / span / 1000 : 0,
      bitsPerFrame: recent.length ? bits / recent.length : 0,
      trackedFps: span ? (recent.length - 1) / span : 0,
      frames: this.frames, packets: this.packets, dropped: this.dropped,
      motionBytes: this.motionBytes, keyframes: this.keyframes,
      keyframeBytes: this.keyframeBytes, bases: this.bases, basisBytes: this.basisBytes,
      otherBytes: this.otherBytes, requests: this.requests,
    };
  }
}

export class DeviceCall extends Call {
  /** `tracker`: a ready FaceTracker; `fps`: the camera's nominal rate the packets are timed by;
   *  `basisAfter`, `basisEvery`: the speaker basis' timing (Sender's: Python's by default). */
  constructor(session, camera, tracker, { fps = 30, maxSide = 384, ...basis } = {}) {
    super(session, camera);
    this.tracker = tracker;
    this.sender = new Sender(fps, { maxSide, ...basis });
    this.sent = new SentCounter();
    this.closed = false;
    this.motion = this.pc.createDataChannel(MOTION_LABEL, { ordered: false, maxRetransmits: 0 });
    this.control = this.pc.createDataChannel(CONTROL_LABEL);
    for (const channel of [this.motion, this.control]) channel.binaryType = "arraybuffer";
    this.control.addEventListener("message", (event) => {
      if (!(event.data instanceof ArrayBuffer)) return;
      const data = new Uint8Array(event.data);
      if (messageType(data) === MessageType.KEYFRAME_REQUEST) this.sent.requests += 1;
      for (const reply of this.sender.control(data)) this.#reliable(reply);
    });
    this.video = Object.assign(document.createElement("video"),
                               { muted: true, playsInline: true, srcObject: camera });
    this.canvas = document.createElement("canvas");
    this.lastSent = performance.now() / 1000;
    this.control.addEventListener("open", () => this.#run(), { once: true });
  }

  /** No camera track: only a transceiver to receive the server's reconstruction. */
  addMedia() {
    this.pc.addTransceiver("video", { direction: "recvonly" });
  }

  recentre() {
    this.sender.recentre();
  }

  stats() {
    return this.sent.snapshot(performance.now() / 1000);
  }

  #reliable(data) {
    if (this.control.readyState !== "open") return;
    this.control.send(data);
    const kind = messageType(data);
    if (kind === MessageType.KEYFRAME) {
      this.sent.keyframes += 1;
      this.sent.keyframeBytes += data.length;
    } else if (kind === MessageType.BASIS) {
      this.sent.bases += 1;
      this.sent.basisBytes += data.length;
    } else {
      this.sent.otherBytes += data.length;
    }
  }

  #send(out, now) {
    out.reliable.forEach((data) => this.#reliable(data));
    let motion = 0;
    for (const data of out.unreliable) {
      if (this.motion.readyState !== "open" || this.motion.bufferedAmount > MAX_BUFFERED) {
        this.sent.dropped += 1;
        continue;
      }
      this.motion.send(data);
      this.sent.packets += 1;
      this.sent.motionBytes += data.length;
      motion += data.length;
    }
    if (motion) this.lastSent = now;
    else if (now - this.lastSent > HEARTBEAT_S) {
      this.#reliable(heartbeatBytes());
      this.lastSent = now;
    }
    this.sent.frame(now, motion);
  }

  /** Until closed: take the newest camera frame, track it, encode it, send it.  One frame at
   *  a time; frames that arrive while one is tracked are skipped (gaps in the sequence). */
  async #run() {
    await this.video.play();
    while (!this.closed) {
      await nextFrame(this.video);
      if (this.closed) break;
      const now = performance.now() / 1000;
      const { videoWidth: width, videoHeight: height } = this.video;
      if (!width || !height) continue;
      if (this.canvas.width !== width || this.canvas.height !== height) {
        Object.assign(this.canvas, { width, height });
      }
      // One copy of the frame: the landmarks and a keyframe's picture come from the same one.
      this.canvas.getContext("2d").drawImage(this.video, 0, 0, width, height);
      try {
        const points = await this.tracker.track(this.canvas, width, height, now);
        if (this.closed) break;
        this.lastPoints = points;
        this.#send(await this.sender.frame(points, now, this.canvas, width, height), now);
      } catch (error) {
        console.error("keypoint capture failed", error);
        this.dispatchEvent(new CustomEvent("error", { detail: error }));
        break;
      }
    }
  }

  close() {
    this.closed = true;
    for (const channel of [this.motion, this.control]) {
      try { channel.close(); } catch { /* already closed */ }
    }
    this.video.srcObject = null;
    super.close();
  }
}

function nextFrame(video) {
  if (video.requestVideoFrameCallback) {
    return new Promise((resolve) => video.requestVideoFrameCallback(() => resolve()));
  }
  return new Promise((resolve) => setTimeout(resolve, 1000 / 30));
}
