// The face mesh in the browser: mediapipe's face_mesh web build (478 points with irises, as
// models/tracking.py uses), vendored by npm into web/node_modules and served by this app, so
// nothing is fetched from a CDN.  Landmarks come out as models.tracking.FaceTracker gives
// them: camera pixels (z scaled by the width), One-Euro smoothed, float32 values.

import { OneEuroFilter } from "./smoothing.js";
import { SPEC } from "./spec.js";

export const MEDIAPIPE_PATH = "/node_modules/@mediapipe/face_mesh/";

/** The face-mesh files are not on this server (web/node_modules was never installed). */
export class TrackerMissingError extends Error {
  constructor() {
    super("The in-browser face tracker is not installed on this server " +
          "(web/node_modules/@mediapipe/face_mesh is missing): run make setup.");
    this.name = "TrackerMissingError";
  }
}

async function loadScript() {
  if (window.FaceMesh) return;
  const probe = await fetch(`${MEDIAPIPE_PATH}face_mesh.js`, { method: "HEAD" });
  if (!probe.ok) throw new TrackerMissingError();
  await new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = `${MEDIAPIPE_PATH}face_mesh.js`;
    script.onload = resolve;
    script.onerror = () => reject(new TrackerMissingError());
    document.head.append(script);
  });
}

export class FaceTracker {
  /** Load the model (a few MB of WebAssembly and weights) and run it once. */
  static async create() {
    await loadScript();
    const tracker = new FaceTracker();
    await tracker.mesh.initialize();
    // The first frame compiles the graph's shaders (seconds without a GPU): do it now, not
    // with the call's first frame.
    const blank = Object.assign(document.createElement("canvas"), { width: 64, height: 64 });
    blank.getContext("2d").fillRect(0, 0, 64, 64);
    await tracker.track(blank, 64, 64, 0);
    return tracker;
  }

  constructor() {
    this.mesh = new window.FaceMesh({ locateFile: (file) => `${MEDIAPIPE_PATH}${file}` });
    this.mesh.setOptions({ maxNumFaces: 1, refineLandmarks: true, selfieMode: false,
                           minDetectionConfidence: 0.5, minTrackingConfidence: 0.5 });
    this.result = null;
    this.mesh.onResults((result) => { this.result = result; });
    this.filter = new OneEuroFilter(SPEC.smoothing);
  }

  /** Float64Array(478 * 3) camera pixels of the face in `image` (width x height), or null. */
  async track(image, width, height, timestamp) {
    this.result = null;
    await this.mesh.send({ image });
    const marks = this.result?.multiFaceLandmarks?.[0];
    if (!marks || marks.length !== SPEC.numLandmarks) {
      this.filter.reset(); // the next face may be somewhere else entirely
      return null;
    }
    const points = new Float64Array(3 * marks.length);
    marks.forEach((p, i) => {
      points[3 * i] = p.x * width;
      points[3 * i + 1] = p.y * height;
      points[3 * i + 2] = p.z * width;
    });
    return this.filter.filter(points, timestamp).map(Math.fround);
  }

  close() {
    this.mesh.close();
  }
}
