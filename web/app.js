// The page: pick an avatar, start the camera, show preview and avatar side by side.
// State is mirrored on <body data-state> and window.reenact for scripts and tests.

import { ApiError, createSession, endSession, getSession, listAvatars } from "./api.js";
import { Call } from "./call.js";
import { DeviceCall } from "./keypoints/call.js";
import { SPEC } from "./keypoints/spec.js";
import { FaceTracker, TrackerMissingError } from "./keypoints/tracker.js";
import { readStats } from "./stats.js";

const $ = (id) => document.getElementById(id);
const ui = {
  avatars: $("avatars"), photo: $("photo"), size: $("size"), fps: $("fps"), mirror: $("mirror"),
  start: $("start"), stop: $("stop"), recentre: $("recentre"), message: $("message"),
  preview: $("preview"), avatar: $("avatar"), apikey: $("apikey"), apikeyField: $("apikey-field"),
};
// Servers with API keys: the key typed in is kept for this tab only.
const API_KEY_STORAGE = "reenact.apiKey";
const NO_FACE_AFTER_MS = 1000;
const DEVICE = "keypoints-device"; // the face mesh runs here; only keypoints leave the page

const app = { state: "idle", mode: "avatar", keypoints: null, device: null, tracker: null,
              session: null, call: null, camera: null, stats: null,
              serverStats: null, faceLostSince: null, timers: [], ended: null };
window.reenact = app;

function setState(state) {
  app.state = state;
  document.body.dataset.state = state;
  const busy = state === "starting" || state === "live";
  ui.start.disabled = busy;
  ui.stop.disabled = !busy;
  ui.recentre.disabled = state !== "live";
}

function say(text, level = "info") {
  ui.message.textContent = text;
  ui.message.className = level;
}

function describeError(error) {
  if (error instanceof ApiError) {
    if (error.status === 503) {
      const wait = error.retryAfter ? ` in ${error.retryAfter} s` : " later";
      return `The server is full. Please try again${wait}.`;
    }
    if (error.code === "no_face") {
      return "No face found in that photo. Choose a clear, front-facing portrait.";
    }
    if (error.status === 401) {
      return ui.apikey.value.trim() ? "That API key was refused. Check it and start again."
                                    : "This server needs an API key: enter it above and start again.";
    }
    if (error.status === 429) return `Too many requests: ${error.message}`;
    if (error.status === 413) return `That image is too large: ${error.message}`;
    if (error.status === 415) return "That file is not a supported image (JPEG, PNG or WebP).";
    return `The server refused: ${error.message}`;
  }
  if (error instanceof TrackerMissingError) return error.message;
  if (error?.name === "NotAllowedError") {
    return "Camera access was denied. Allow the camera for this page and try again.";
  }
  if (error?.name === "NotFoundError" || error?.name === "OverconstrainedError") {
    return "No camera found. Connect a camera and try again.";
  }
  if (error?.name === "NotReadableError") {
    return "The camera is busy in another application.";
  }
  return `Something went wrong: ${error?.message ?? error}`;
}

async function loadAvatars() {
  try {
    const avatars = await listAvatars();
    ui.avatars.replaceChildren(...avatars.map((a, i) => {
      const label = document.createElement("label");
      label.title = `${a.title} — ${a.licence}`;
      const input = Object.assign(document.createElement("input"),
                                  { type: "radio", name: "avatar", value: a.name, checked: i === 0 });
      input.addEventListener("change", () => { ui.photo.value = ""; });
      const img = Object.assign(document.createElement("img"), { src: a.image, alt: a.title });
      label.append(input, img, document.createTextNode(a.title.split(" (")[0]));
      return label;
    }));
  } catch (error) {
    say(`Cannot reach the server: ${error.message}`, "error");
  }
}

async function openCamera(fps) {
  if (!navigator.mediaDevices?.getUserMedia) {
    const error = new Error("this page needs https or localhost to use the camera");
    error.name = "NotAllowedError";
    throw error;
  }
  return navigator.mediaDevices.getUserMedia({
    audio: false,
    // No more frames than the avatar will use: every frame sent costs the server a decode.
    video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: Math.min(30, fps) } },
  });
}

async function start() {
  setState("starting");
  try {
    say("Starting the camera…");
    const fps = Number(ui.fps.value);
    app.camera = await openCamera(fps);
    ui.preview.srcObject = app.camera;

    if (app.mode === DEVICE) {
      // Before the session: a server without the tracker's files says so at once.
      say("Loading the face tracker (a few MB, once)…");
      app.tracker ??= await FaceTracker.create();
    }
    say(app.mode === "avatar" ? "Preparing the avatar…" : "Preparing the relay…");
    const photo = ui.photo.files[0] ?? null;
    const chosen = document.querySelector("input[name=avatar]:checked");
    const apiKey = ui.apikey.value.trim() || null;
    app.ended = null;
    app.session = await createSession({
      photo, avatar: photo ? null : chosen?.value ?? null,
      size: Number(ui.size.value), fps, mode: app.mode, apiKey,
    });
    if (apiKey) sessionStorage.setItem(API_KEY_STORAGE, apiKey);

    say("Connecting…");
    app.call = app.mode === DEVICE ? deviceCall(app.session, app.camera)
                                   : new Call(app.session, app.camera);
    app.call.addEventListener("error", (e) => {
      say(`Keypoint capture stopped: ${e.detail?.message ?? e.detail}`, "error");
      stop().then(() => setState("error"));
    });
    app.call.addEventListener("remote", (e) => { ui.avatar.srcObject = e.detail; });
    app.call.addEventListener("state", (e) => onConnectionState(e.detail));
    app.call.addEventListener("telemetry", (e) => onTelemetry(e.detail));
    app.call.addEventListener("end", (e) => onEnded(e.detail));
    await app.call.start();
    app.timers.push(setInterval(refreshStats, 1000), setInterval(refreshServer, 2000));
  } catch (error) {
    console.error(error);
    await stop();
    if (error instanceof ApiError && error.status === 401) ui.apikeyField.hidden = false;
    say(describeError(error), "error");
    setState("error");
  }
}

/** A call that sends keypoints tracked here, timed by the camera's own frame rate; the
 *  keyframe picture is as large as the server's output needs (as its own relay makes it). */
function deviceCall(session, camera) {
  const fps = camera.getVideoTracks()[0]?.getSettings().frameRate || 30;
  const side = Math.round(session.options.size * SPEC.keyframe.scalePerOutputPixel);
  const maxSide = Math.max(SPEC.keyframe.maxSide, Math.min(SPEC.maxImageSide, side));
  return new DeviceCall(session, camera, app.tracker, { fps, maxSide });
}

function onConnectionState(state) {
  if (state === "connected") {
    setState("live");
    say("Live. Move your head, talk, smile.");
  } else if (state === "failed") {
    say("The connection failed (network or firewall). Try again.", "error");
    stop().then(() => setState("error"));
  } else if (state === "disconnected") {
    say("Connection interrupted, trying to recover…", "warn");
  }
}

function onTelemetry(message) {
  if (app.mode === DEVICE) {
    if (message.keypoints) app.keypoints = message.keypoints; // as the server received them
    return; // the face is tracked here: showDevice reports it, and what this page sent
  }
  showFace(message.face);
  if (message.keypoints) showKeypoints(message.keypoints);
}

function showFace(found) {
  if (found) {
    if (app.faceLostSince !== null && app.state === "live") say("Live. Face found again.");
    app.faceLostSince = null;
  } else {
    app.faceLostSince ??= performance.now();
    if (performance.now() - app.faceLostSince > NO_FACE_AFTER_MS && app.state === "live") {
      say("No face detected: look into the camera, with your face well lit.", "warn");
    }
  }
  $("stat-face").textContent = found ? "found" : "not found";
}

/** The keypoint stream's cost as the server counted it (motion packets; keyframe apart). */
function showKeypoints(keypoints) {
  app.keypoints = keypoints;
  const keyframe = keypoints.keyframe_bytes ? `, keyframe ${fmt(keypoints.keyframe_bytes / 1000, 1, " kB")}` : "";
  $("stat-keypoint-kbps").textContent =
    `${fmt(keypoints.kbps, 1, " kbit/s")} (${fmt(keypoints.bits_per_frame, 0, " bits/frame")}${keyframe})`;
}

const fmt = (v, digits = 0, unit = "") => (v === null || v === undefined || Number.isNaN(v))
  ? "–" : `${Number(v).toFixed(digits)}${unit}`;

async function refreshStats() {
  const call = app.call; // the call may be stopped while its stats are read
  if (!call) return;
  app.stats = await readStats(call.pc, app.stats);
  const s = app.stats;
  $("stat-fps-out").textContent = fmt(s.fpsOut, 1, " fps");
  $("stat-fps-in").textContent = `${fmt(s.fpsIn, 1, " fps")}` +
    (s.width ? ` (${s.width}×${s.height})` : "");
  $("stat-decoded").textContent = fmt(s.framesDecoded);
  const serverDropped = app.serverStats?.stats?.dropped;
  $("stat-dropped").textContent = `${fmt(s.framesDropped)} / ${fmt(serverDropped)}`;
  $("stat-rtt").textContent = fmt(s.rttMs, 0, " ms");
  const ms = call.telemetry.serverMs;
  const mean = ms.length ? ms.reduce((a, b) => a + b, 0) / ms.length : null;
  $("stat-server").textContent = fmt(mean, 0, " ms");
  $("stat-video-kbps").textContent = fmt(s.kbpsOut, 0, " kbit/s") +
    (s.kbpsIn !== null ? ` (the video coming back: ${fmt(s.kbpsIn, 0, " kbit/s")})` : "");
  if (call instanceof DeviceCall) showDevice(call);
}

/** Mode keypoints-device: what this page itself sent on its data channels, and its face. */
function showDevice(call) {
  const d = app.device = call.stats();
  const keyframe = d.keyframeBytes ? `, keyframe ${fmt(d.keyframeBytes / 1000, 1, " kB")}` : "";
  const basis = d.basisBytes ? `, speaker basis ${fmt(d.basisBytes / 1000, 2, " kB")}` : "";
  const server = app.keypoints ? `; the server received ${fmt(app.keypoints.kbps, 1, " kbit/s")}` : "";
  $("stat-keypoint-kbps").textContent = `${fmt(d.kbps, 1, " kbit/s")} sent by this browser ` +
    `(${fmt(d.bitsPerFrame, 0, " bits/frame")} at ${fmt(d.trackedFps, 1, " fps")}${keyframe}${basis})${server}`;
  $("stat-video-kbps").textContent = "none: no video leaves this browser" +
    (app.stats?.kbpsIn ? ` (the video coming back: ${fmt(app.stats.kbpsIn, 0, " kbit/s")})` : "");
  if (call.lastPoints !== undefined) showFace(call.lastPoints !== null);
}

async function refreshServer() {
  if (!app.session) return;
  try {
    app.serverStats = await getSession(app.session);
    const { status, ended_reason: reason } = app.serverStats;
    if (status === "ended" || status === "failed") await onEnded({ status, reason });
  } catch (error) {
    if (error instanceof ApiError && [404, 410].includes(error.status) && app.state === "live") {
      say("The server ended this session (idle, or it restarted). Start again.", "warn");
      await stop();
    }
  }
}

/** The server ended the session (its telemetry `end`, or its status when polled): say why. */
async function onEnded({ status, reason }) {
  if (!app.session) return;
  await stop();
  app.ended = { status, reason };
  if (status === "failed") say(`The server failed this session (${reason}). Start again.`, "error");
  else say(`The server ended this session (${reason}). Start again.`, "warn");
}

async function stop() {
  app.timers.forEach(clearInterval);
  app.timers = [];
  app.call?.close();
  app.call = null;
  if (app.session) endSession(app.session);
  app.session = null;
  app.camera?.getTracks().forEach((t) => t.stop());
  app.camera = null;
  ui.preview.srcObject = null;
  ui.avatar.srcObject = null;
  app.faceLostSince = null;
  app.keypoints = null;
  app.device = null;
  setState("idle");
}

ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", () => { stop(); say("Stopped."); });
ui.recentre.addEventListener("click", () => app.call?.recentre());
ui.photo.addEventListener("change", () => {
  if (ui.photo.files[0]) document.querySelectorAll("input[name=avatar]").forEach((r) => { r.checked = false; });
});
function chooseMode() {
  app.mode = document.querySelector("input[name=mode]:checked")?.value ?? "avatar";
  document.body.dataset.mode = app.mode;
  const keypoints = app.mode !== "avatar";
  $("remote-caption").textContent = app.mode === DEVICE
    ? "You, rebuilt from keypoints this browser sent" : keypoints ? "You, rebuilt from keypoints" : "Avatar";
  ui.recentre.title = keypoints ? "Send a new keyframe: a fresh picture of you"
                                : "Take your current expression as neutral";
}
document.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", chooseMode));
ui.mirror.addEventListener("change", () => {
  for (const v of [ui.preview, ui.avatar]) v.classList.toggle("mirrored", ui.mirror.checked);
});
window.addEventListener("pagehide", () => { if (app.session) endSession(app.session); });

const storedKey = sessionStorage.getItem(API_KEY_STORAGE);
if (storedKey) {
  ui.apikey.value = storedKey;
  ui.apikeyField.hidden = false;
}
chooseMode();
setState("idle");
loadAvatars();
