// The speaker-adapted basis in the browser: models/codec_stream.learn_basis and
// models/codec.Basis in JavaScript.  The sender learns, from its own contour coefficients
// since the keyframe, the few directions its face actually moves in, sends them once
// (a BASIS message) and, once the receiver acknowledged them (BASIS_ACK), codes each frame as
// coefficients along them plus a residual (codec.js's quantize): about a third fewer bits.
//
// Learning needs the principal directions of a (T x 76) history.  numpy takes them from an
// SVD; here they are the eigenvectors of the 76 x 76 Gram matrix, found by cyclic Jacobi
// rotations in float64: the same subspace (its directions' signs, like the SVD's, arbitrary),
// accurate to far below the int8 the BASIS message carries them in.

import { crc32, crc8, roundHalfEven } from "./bits.js";
import { SPEC } from "./spec.js";

const TYPE = SPEC.messageTypes;
const typeByte = (kind) => (kind << 4) | SPEC.version;
const D = SPEC.numCoefficients;

/** numpy's pairwise summation (add.reduce) for up to 128 values, so that the unit rows of a
 *  basis are exactly Python's (np.linalg.norm over a row sums this way). */
function pairwiseSum(values) {
  const n = values.length;
  if (n < 8) return values.reduce((sum, v) => sum + v, 0);
  const r = values.slice(0, 8);
  let i = 8;
  for (; i < n - (n % 8); i += 8) for (let j = 0; j < 8; j++) r[j] += values[i + j];
  let sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
  for (; i < n; i++) sum += values[i];
  return sum;
}

/** Eigenvalues and unit eigenvectors of a symmetric n x n matrix (array of rows, float64),
 *  by cyclic Jacobi rotations (Golub & Van Loan, Matrix Computations, 8.5.3); largest first. */
export function symmetricEigen(matrix, { maxSweeps = 50 } = {}) {
  const n = matrix.length;
  const a = matrix.map((row) => Float64Array.from(row));
  const v = Array.from({ length: n }, (_, i) => {
    const row = new Float64Array(n);
    row[i] = 1;
    return row;
  });
  let scale = 0;
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) scale += a[i][j] * a[i][j];
  for (let sweep = 0; sweep < maxSweeps; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += a[p][q] * a[p][q];
    if (off <= 1e-32 * scale || off === 0) break;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = a[p][q];
        if (apq === 0) continue;
        // The rotation that zeroes a[p][q]: tan(phi) = t, the smaller root (stable).
        const theta = (a[q][q] - a[p][p]) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < n; k++) { // columns p, q
          const akp = a[k][p];
          const akq = a[k][q];
          a[k][p] = c * akp - s * akq;
          a[k][q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) { // rows p, q
          const apk = a[p][k];
          const aqk = a[q][k];
          a[p][k] = c * apk - s * aqk;
          a[q][k] = s * apk + c * aqk;
        }
        a[p][q] = a[q][p] = 0;
        for (let k = 0; k < n; k++) { // eigenvectors: v's rows p, q (columns of V)
          const vp = v[p][k];
          const vq = v[q][k];
          v[p][k] = c * vp - s * vq;
          v[q][k] = s * vp + c * vq;
        }
      }
    }
  }
  const order = [...Array(n).keys()].sort((i, j) => a[j][j] - a[i][i]);
  return { values: order.map((i) => a[i][i]), vectors: order.map((i) => v[i]) };
}

/** models.codec_stream.learn_basis: the principal directions (K rows of NUM_COEFFICIENTS)
 *  of a history of contour coefficients (canonical units, Motion.expression), uncentred
 *  because the keyframe's face is the origin every packet is coded from; K is the fewest
 *  holding `energy` of the history, at most `maxRank` and MAX_BASIS.  [] when all are zero. */
export function learnBasis(expressions, { maxRank = SPEC.basis.maxRank,
                                          energy = SPEC.basis.energy } = {}) {
  if (expressions.length < 2 || expressions.some((e) => e.length !== D)) {
    throw new RangeError(`need at least 2 rows of ${D} coefficients`);
  }
  const y = expressions.map((e) => e.map((value) => value / SPEC.steps.expression));
  const gram = Array.from({ length: D }, () => new Float64Array(D)); // y^T y
  for (const row of y) {
    for (let i = 0; i < D; i++) {
      const yi = row[i];
      if (yi === 0) continue;
      for (let j = i; j < D; j++) gram[i][j] += yi * row[j];
    }
  }
  for (let i = 0; i < D; i++) for (let j = 0; j < i; j++) gram[i][j] = gram[j][i];
  const { values, vectors } = symmetricEigen(gram);
  const energies = values.map((value) => Math.max(value, 0)); // squared singular values
  const total = energies.reduce((sum, e) => sum + e, 0);
  if (total === 0) return [];
  let rank = 0; // np.searchsorted(cumulative / total, energy) + 1
  for (let cumulative = 0; rank < D; rank++) {
    cumulative += energies[rank];
    if (cumulative / total >= energy) break;
  }
  return vectors.slice(0, Math.min(rank + 1, maxRank, SPEC.maxBasis)).map((v) => Array.from(v));
}

/** models.codec.Basis.from_vectors: rows quantized to int8 with one float32 scale each, and
 *  the unit vectors both ends rebuild from them (Basis.vectors), and the BASIS message. */
export function makeBasis(id, vectors) {
  if (!(id >= 1 && id <= 3) || !(vectors.length >= 1 && vectors.length <= SPEC.maxBasis)) {
    throw new RangeError(`a basis has an id in 1..3 and 1..${SPEC.maxBasis} rows`);
  }
  const scales = [];
  const rows = vectors.map((vector) => {
    const scale = Math.max(Math.max(...vector.map(Math.abs)), 1e-12) / 127;
    scales.push(Math.fround(scale));
    return Int8Array.from(vector, (value) => roundHalfEven(value / scale));
  });
  const units = rows.map((row, k) => {
    const v = Array.from(row, (value) => value * scales[k]);
    const norm = Math.max(Math.sqrt(pairwiseSum(v.map((x) => x * x))), 1e-12);
    return v.map((x) => x / norm);
  });
  return { id, rows, scales, vectors: units, bytes: basisBytes(id, rows, scales) };
}

/** BASIS: type, id, K, K float32 scales, K x 76 int8 rows, CRC-32 (all little-endian). */
function basisBytes(id, rows, scales) {
  const k = rows.length;
  const out = new Uint8Array(3 + 4 * k + k * D + 4);
  const view = new DataView(out.buffer);
  out.set([typeByte(TYPE.BASIS), id, k]);
  scales.forEach((scale, i) => view.setFloat32(3 + 4 * i, scale, true));
  rows.forEach((row, i) => out.set(new Uint8Array(row.buffer), 3 + 4 * k + i * D));
  view.setUint32(out.length - 4, crc32(out.subarray(0, out.length - 4)), true);
  return out;
}

/** The basis id of a BASIS_ACK from the receiver, or null when it does not check out. */
export function parseBasisAck(data) {
  if (data.length !== 3 || data[0] !== typeByte(TYPE.BASIS_ACK)) return null;
  if (crc8(data.subarray(0, 2)) !== data[2] || !(data[1] >= 1 && data[1] <= 3)) return null;
  return data[1];
}
