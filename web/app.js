// The page: pick an avatar, start the camera, show preview and avatar side by side.
// State is mirrored on <body data-state> and window.reenact for scripts and tests.

import { ApiError, createSession, endSession, getSession, listAvatars } from "./api.js";
import { Call } from "./call.js";
import { readStats } from "./stats.js";

const $ = (id) => document.getElementById(id);
const ui = {
  avatars: $("avatars"), photo: $("photo"), size: $("size"), fps: $("fps"), mirror: $("mirror"),
  start: $("start"), stop: $("stop"), recentre: $("recentre"), message: $("message"),
  preview: $("preview"), avatar: $("avatar"),
};
const NO_FACE_AFTER_MS = 1000;

const app = { state: "idle", session: null, call: null, camera: null, stats: null,
              serverStats: null, faceLostSince: null, timers: [] };
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
    if (error.status === 413) return `That image is too large: ${error.message}`;
    if (error.status === 415) return "That file is not a supported image (JPEG, PNG or WebP).";
    return `The server refused: ${error.message}`;
  }
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

    say("Preparing the avatar…");
    const photo = ui.photo.files[0] ?? null;
    const chosen = document.querySelector("input[name=avatar]:checked");
    app.session = await createSession({
      photo, avatar: photo ? null : chosen?.value ?? null,
      size: Number(ui.size.value), fps,
    });

    say("Connecting…");
    app.call = new Call(app.session, app.camera);
    app.call.addEventListener("remote", (e) => { ui.avatar.srcObject = e.detail; });
    app.call.addEventListener("state", (e) => onConnectionState(e.detail));
    app.call.addEventListener("telemetry", (e) => onTelemetry(e.detail));
    await app.call.start();
    app.timers.push(setInterval(refreshStats, 1000), setInterval(refreshServer, 2000));
  } catch (error) {
    console.error(error);
    await stop();
    say(describeError(error), "error");
    setState("error");
  }
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
  if (message.face) {
    if (app.faceLostSince !== null && app.state === "live") say("Live. Face found again.");
    app.faceLostSince = null;
  } else {
    app.faceLostSince ??= performance.now();
    if (performance.now() - app.faceLostSince > NO_FACE_AFTER_MS && app.state === "live") {
      say("No face detected: look into the camera, with your face well lit.", "warn");
    }
  }
  $("stat-face").textContent = message.face ? "found" : "not found";
}

const fmt = (v, digits = 0, unit = "") => (v === null || v === undefined || Number.isNaN(v))
  ? "–" : `${Number(v).toFixed(digits)}${unit}`;

async function refreshStats() {
  if (!app.call) return;
  app.stats = await readStats(app.call.pc, app.stats);
  const s = app.stats;
  $("stat-fps-out").textContent = fmt(s.fpsOut, 1, " fps");
  $("stat-fps-in").textContent = `${fmt(s.fpsIn, 1, " fps")}` +
    (s.width ? ` (${s.width}×${s.height})` : "");
  $("stat-decoded").textContent = fmt(s.framesDecoded);
  const serverDropped = app.serverStats?.stats?.dropped;
  $("stat-dropped").textContent = `${fmt(s.framesDropped)} / ${fmt(serverDropped)}`;
  $("stat-rtt").textContent = fmt(s.rttMs, 0, " ms");
  const ms = app.call.telemetry.serverMs;
  const mean = ms.length ? ms.reduce((a, b) => a + b, 0) / ms.length : null;
  $("stat-server").textContent = fmt(mean, 0, " ms");
}

async function refreshServer() {
  if (!app.session) return;
  try {
    app.serverStats = await getSession(app.session);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404 && app.state === "live") {
      say("The server ended this session (idle, or it restarted). Start again.", "warn");
      await stop();
    }
  }
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
  setState("idle");
}

ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", () => { stop(); say("Stopped."); });
ui.recentre.addEventListener("click", () => app.call?.recentre());
ui.photo.addEventListener("change", () => {
  if (ui.photo.files[0]) document.querySelectorAll("input[name=avatar]").forEach((r) => { r.checked = false; });
});
ui.mirror.addEventListener("change", () => {
  for (const v of [ui.preview, ui.avatar]) v.classList.toggle("mirrored", ui.mirror.checked);
});
window.addEventListener("pagehide", () => { if (app.session) endSession(app.session); });

setState("idle");
loadAvatars();
