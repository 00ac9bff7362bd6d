// Head pose and canonical shape of a 478-point face mesh: models/pose.py in JavaScript.
//
// Points are a Float64Array of 478 x 3 (x, y in pixels, z in the same scale), row-major.
// The head frame comes from mirror pairs of rigid landmarks, exactly as in Python, so no SVD
// or canonical face model is needed; a rotation is a 3 x 3 array of rows, R[i][j].

import { SPEC } from "./spec.js";

const RIGID = SPEC.rigid;
const PAIRS = SPEC.rigidPairs;
const TOP = SPEC.midlineTop;
const BOTTOM = SPEC.midlineBottom;

const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
const norm = (a) => Math.sqrt(dot(a, a));
const unit = (v) => {
  const n = Math.max(norm(v), 1e-9);
  return [v[0] / n, v[1] / n, v[2] / n];
};
const cross = (a, b) => [
  a[1] * b[2] - a[2] * b[1],
  a[2] * b[0] - a[0] * b[2],
  a[0] * b[1] - a[1] * b[0],
];

function mean(p, indices) {
  const m = [0, 0, 0];
  for (const i of indices) for (let c = 0; c < 3; c++) m[c] += p[3 * i + c];
  return m.map((v) => v / indices.length);
}

/** {rotation (3x3 rows; columns: head's left, down, back axes), scale, translation (3)}. */
export function fitPose(p) {
  const sum = [0, 0, 0];
  for (const [a, b] of PAIRS) for (let c = 0; c < 3; c++) sum[c] += p[3 * b + c] - p[3 * a + c];
  const left = unit(sum);
  const top = mean(p, TOP);
  const bottom = mean(p, BOTTOM);
  const up = [top[0] - bottom[0], top[1] - bottom[1], top[2] - bottom[2]];
  const along = dot(up, left);
  const down = unit([-(up[0] - along * left[0]), -(up[1] - along * left[1]),
                     -(up[2] - along * left[2])]);
  const back = cross(left, down);
  const rotation = [0, 1, 2].map((i) => [left[i], down[i], back[i]]);
  const t = mean(p, RIGID);
  let squares = 0;
  for (const i of RIGID) {
    const d = [p[3 * i] - t[0], p[3 * i + 1] - t[1], p[3 * i + 2] - t[2]];
    for (let j = 0; j < 3; j++) {
      const local = d[0] * rotation[0][j] + d[1] * rotation[1][j] + d[2] * rotation[2][j];
      squares += local * local;
    }
  }
  return { rotation, scale: Math.sqrt(squares / RIGID.length), translation: t };
}

/** Canonical shape of the listed points (pose removed): R^T (p - t) / scale, (n x 3). */
export function canonical(p, pose, indices) {
  const { rotation: r, scale: s, translation: t } = pose;
  return indices.map((i) => {
    const d = [p[3 * i] - t[0], p[3 * i + 1] - t[1], p[3 * i + 2] - t[2]];
    return [0, 1, 2].map((j) => (d[0] * r[0][j] + d[1] * r[1][j] + d[2] * r[2][j]) / s);
  });
}

/** R_a R_b^T. */
export function relative(a, b) {
  return [0, 1, 2].map((i) => [0, 1, 2].map((j) => dot(a[i], b[j])));
}

/** Rotation vector (axis x angle, rad) of an orthonormal matrix, as scipy's
 *  Rotation.from_matrix(m).as_rotvec() computes it (largest-pivot quaternion, then angle). */
export function rotationVector(m) {
  const trace = m[0][0] + m[1][1] + m[2][2];
  const decision = [m[0][0], m[1][1], m[2][2], trace];
  let choice = 0;
  for (let i = 1; i < 4; i++) if (decision[i] > decision[choice]) choice = i;
  let q;
  if (choice === 3) {
    q = [m[2][1] - m[1][2], m[0][2] - m[2][0], m[1][0] - m[0][1], 1 + trace];
  } else {
    const i = choice;
    const j = (i + 1) % 3;
    const k = (j + 1) % 3;
    q = [0, 0, 0, 0];
    q[i] = 1 - trace + 2 * m[i][i];
    q[j] = m[j][i] + m[i][j];
    q[k] = m[k][i] + m[i][k];
    q[3] = m[k][j] - m[j][k];
  }
  const n = Math.hypot(q[0], q[1], q[2], q[3]);
  q = q.map((v) => v / n);
  const flip = q[3] < 0 || (q[3] === 0 && (q[0] < 0 || (q[0] === 0 && (q[1] < 0
               || (q[1] === 0 && q[2] < 0)))));
  if (flip) q = q.map((v) => -v);
  const angle = 2 * Math.atan2(norm(q), q[3]);
  const a2 = angle * angle;
  const scale = angle <= 1e-3 ? 2 + a2 / 12 + (7 * a2 * a2) / 2880 : angle / Math.sin(angle / 2);
  return [scale * q[0], scale * q[1], scale * q[2]];
}
