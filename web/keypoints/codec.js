// The keypoint codec's sending end in the browser: models/codec.py (messages, quantization)
// and models/codec_stream.py's Encoder, ported line by line so that what the page sends is
// exactly what the Python encoder would send for the same landmarks.  The bitstream is
// specified in models/codec.py's docstring; the numbers come from spec.js, generated from the
// Python.  No DOM here: the picture of a keyframe is cut and encoded by the caller (capture.js).
// The speaker basis (learning it, its BASIS message) is in basis.js.
//
// Landmarks are Float64Array(478 * 3) in camera pixels (x, y, and z in the same scale),
// holding float32 values as models.landmarks.Landmarks does.  Where Python rounds through
// float32 (Landmarks.transformed, keyframe region), Math.fround does the same here.

import { learnBasis, makeBasis } from "./basis.js";
import { BitWriter, crc32, crc8, roundHalfEven } from "./bits.js";
import { canonical, fitPose, relative, rotationVector } from "./pose.js";
import { SPEC } from "./spec.js";

const TYPE = SPEC.messageTypes;
const typeByte = (kind) => (kind << 4) | SPEC.version;
const N = SPEC.numLandmarks;
const CODED = SPEC.codedPoints;
const STEP = SPEC.steps;
const K = SPEC.k;

export const MessageType = TYPE;

/** The message type of received bytes (version checked), or null. */
export function messageType(data) {
  if (!data?.length || (data[0] & 0x0f) !== SPEC.version) return null;
  return data[0] >> 4;
}

/** a - b for 16-bit sequence numbers, in [-32768, 32767]. */
export function seqDifference(a, b) {
  const m = SPEC.seqModulo;
  return ((((a - b + m / 2) % m) + m) % m) - m / 2;
}

// --- the contour basis: coefficients of a displacement of the coded points ----------------

const PART_LAYOUT = (() => {
  let start = 0;
  return SPEC.parts.map((part) => {
    const layout = { ...part, start };
    start += part.indices.length;
    return layout;
  });
})();

/** models.contour_basis.analyse: (NUM_COEFFICIENTS) coefficients of a (146 x 2) displacement;
 *  per part, all x modes, then all y modes, lowest frequency first. */
export function analyse(delta) {
  const out = [];
  for (const part of PART_LAYOUT) {
    for (const axis of [0, 1]) {
      for (const curve of part.curve) {
        let sum = 0;
        for (let m = 0; m < curve.length; m++) sum += curve[m] * delta[part.start + m][axis];
        out.push(sum);
      }
    }
  }
  return out;
}

// --- geometry: the keyframe's region and the camera -> picture mapping ---------------------

/** models.crop.face_box with its defaults: the avatar crop around the face oval. */
export function faceBox(points) {
  let x0 = Infinity;
  let y0 = Infinity;
  let x1 = -Infinity;
  let y1 = -Infinity;
  for (const i of SPEC.faceOval) {
    x0 = Math.min(x0, points[3 * i]);
    x1 = Math.max(x1, points[3 * i]);
    y0 = Math.min(y0, points[3 * i + 1]);
    y1 = Math.max(y1, points[3 * i + 1]);
  }
  const w = x1 - x0;
  const h = y1 - y0;
  return { cx: (x0 + x1) / 2, cy: (y0 + y1) / 2 - SPEC.faceBox.lift * h,
           size: Math.max(w, h) * SPEC.faceBox.scale };
}

/** models.codec_stream.keyframe_region: the square of the camera frame a keyframe shows. */
export function keyframeRegion(points, width, height) {
  const box = faceBox(points);
  const side = Math.max(box.size, Math.min(box.size * SPEC.regionScale, Math.min(width, height)));
  let { cx, cy } = box;
  if (side <= width) cx = Math.min(Math.max(cx, side / 2), width - side / 2);
  if (side <= height) cy = Math.min(Math.max(cy, side / 2), height - side / 2);
  return { cx, cy, size: side };
}

/** Landmarks.transformed by CropBox.matrix(side): camera pixels -> picture pixels, float32. */
function transform(points, region, side) {
  const s = side / region.size;
  const tx = side / 2 - s * region.cx;
  const ty = side / 2 - s * region.cy;
  const zScale = Math.sqrt(Math.abs(s * s));
  const out = new Float64Array(3 * N);
  for (let i = 0; i < N; i++) {
    out[3 * i] = Math.fround(points[3 * i] * s + tx);
    out[3 * i + 1] = Math.fround(points[3 * i + 1] * s + ty);
    out[3 * i + 2] = Math.fround(points[3 * i + 2] * zScale);
  }
  return out;
}

/** A face state reduced to what motion is measured from: pose, and the coded points' shape. */
function faceState(points) {
  const pose = fitPose(points);
  return { pose, shape: canonical(points, pose, CODED) };
}

// --- quantization ---------------------------------------------------------------------------

/** models.codec._round: a dead zone (|x| < deadZone -> 0), else to nearest, ties away from 0. */
function quantizeValue(x, deadZone = 0.5) {
  const a = Math.abs(x);
  if (a < deadZone) return 0;
  return Math.sign(x) * Math.floor(a + 0.5);
}

/** The motion of a state relative to the reference, unquantized (models.codec.measure). */
export function measure(state, reference) {
  const rel = relative(state.pose.rotation, reference.pose.rotation);
  const ref = reference.pose;
  const delta = state.shape.map((p, i) => [p[0] - reference.shape[i][0],
                                           p[1] - reference.shape[i][1]]);
  return {
    rotation: rotationVector(rel),
    logScale: Math.log(state.pose.scale / ref.scale),
    translation: [0, 1].map((c) => (state.pose.translation[c] - ref.translation[c]) / ref.scale),
    expression: analyse(delta),
  };
}

/** The packet fields of a motion (models.codec.quantize): with a basis (makeBasis's, as the
 *  receiver holds it), coefficients c = round(V y) along its unit rows V, and the parts carry
 *  the residual round(y - V^T c); without, the parts carry round(y). */
export function quantize(motion, basis = null) {
  let y = motion.expression.map((v) => v / STEP.expression);
  let coefficients = [];
  if (basis !== null) {
    const V = basis.vectors;
    coefficients = V.map((row) => quantizeValue(row.reduce((s, v, j) => s + v * y[j], 0),
                                                SPEC.deadZone));
    y = y.map((value, j) => value - V.reduce((s, row, k) => s + row[j] * coefficients[k], 0));
  }
  return {
    rotation: motion.rotation.map((v) => quantizeValue(v / STEP.rotation)),
    scale: quantizeValue(motion.logScale / STEP.scale),
    translation: motion.translation.map((v) => quantizeValue(v / STEP.translation)),
    expression: y.map((v) => quantizeValue(v, SPEC.deadZone)),
    basisId: basis === null ? 0 : basis.id,
    basis: coefficients,
  };
}

// --- messages -------------------------------------------------------------------------------

/** MOTION: the bit string, zero-padded, then CRC-8. */
export function motionBytes(packet) {
  const w = new BitWriter();
  w.write(typeByte(TYPE.MOTION), 8);
  w.write(packet.seq, 16);
  w.write(packet.epoch, 2);
  w.se(packet.jitterMs, K.jitter);
  w.write(packet.basisId ?? 0, 2); // 0: the contour coefficients alone
  packet.rotation.forEach((v, i) => w.se(v, K.rotation[i]));
  w.se(packet.scale, K.scale);
  packet.translation.forEach((v) => w.se(v, K.translation));
  (packet.basis ?? []).forEach((v) => w.se(v, K.basis));
  let start = 0;
  for (const part of SPEC.parts) {
    const size = 2 * part.modes;
    const values = packet.expression.slice(start, start + size);
    start += size;
    const any = values.some((v) => v !== 0);
    w.write(any ? 1 : 0, 1);
    if (any) values.forEach((v) => w.se(v, K.part));
  }
  const body = w.toBytes();
  const out = new Uint8Array(body.length + 1);
  out.set(body);
  out[body.length] = crc8(body);
  return out;
}

/** KEYFRAME: the fixed little-endian header, the reference landmarks, the picture, CRC-32. */
export function keyframeBytes(keyframe) {
  const head = 27;
  const points = 2 * 3 * N;
  const image = keyframe.image;
  const out = new Uint8Array(head + points + 4 + image.length + 4);
  const view = new DataView(out.buffer);
  view.setUint8(0, typeByte(TYPE.KEYFRAME));
  view.setUint8(1, keyframe.epoch);
  view.setUint16(2, keyframe.seq, true);
  view.setUint32(4, keyframe.timestampMs, true);
  view.setUint16(8, Math.round(keyframe.fps * 100), true);
  view.setUint8(10, SPEC.imageFormats.indexOf(keyframe.imageFormat));
  view.setFloat32(11, keyframe.region.cx, true);
  view.setFloat32(15, keyframe.region.cy, true);
  view.setFloat32(19, keyframe.region.size, true);
  view.setUint16(23, keyframe.side, true);
  view.setUint16(25, keyframe.side, true);
  for (let i = 0; i < 3 * N; i++) {
    view.setInt16(head + 2 * i, roundHalfEven(keyframe.landmarks[i] * SPEC.landmarkUnits), true);
  }
  view.setUint32(head + points, image.length, true);
  out.set(image, head + points + 4);
  view.setUint32(out.length - 4, crc32(out.subarray(0, out.length - 4)), true);
  return out;
}

export function heartbeatBytes() {
  const body = [typeByte(TYPE.HEARTBEAT)];
  return new Uint8Array([...body, crc8(body)]);
}

/** A KEYFRAME_REQUEST from the receiver: {epoch, fresh}, or null when it does not check out. */
export function parseKeyframeRequest(data) {
  if (data.length !== 4 || messageType(data) !== TYPE.KEYFRAME_REQUEST) return null;
  if (crc8(data.subarray(0, 3)) !== data[3] || data[2] > 1) return null;
  return { epoch: data[1], fresh: data[2] === 1 };
}

// --- the sender's state ---------------------------------------------------------------------

/** models.codec_stream.Encoder: a keyframe, then one packet per frame; and the speaker basis,
 *  learned from the frames since the keyframe, used once the receiver acknowledged it. */
export class Encoder {
  constructor(fps = 25, { imageFormat = SPEC.keyframe.format, quality = SPEC.keyframe.quality,
                          maxSide = SPEC.keyframe.maxSide } = {}) {
    if (!(fps >= 1 && fps <= 240)) throw new RangeError(`frame rate ${fps} out of range`);
    this.fps = fps;
    this.imageFormat = imageFormat;
    this.quality = quality;
    this.maxSide = Math.max(64, Math.min(SPEC.maxImageSide, maxSide));
    this.keyframe = null;
    this.stats = { frames: 0, packets: 0, packetBits: 0, keyframes: 0, keyframeBytes: 0,
                   bases: 0, basisBytes: 0, noFace: 0, skipped: 0 };
    this.nextSeq = 0;
    this.epoch = -1;
    this.region = null;
    this.side = 0;
    this.reference = null;
    this.keyframeTime = 0;
    this.bases = new Map(); // id -> makeBasis's basis, sent (not necessarily arrived)
    this.active = null; // the basis packets use: acknowledged by the receiver
    this.nextBasisId = 1;
    // Measured contour coefficients (Motion.expression) since the keyframe, to learn a basis
    // from: the newest SPEC.basis.history (about a minute), as Python's deque.
    this.history = [];
  }

  get seq() {
    return this.nextSeq;
  }

  /** The basis motion packets use now (acknowledged by the receiver), or null. */
  get basis() {
    return this.active;
  }

  /** Where the next keyframe's picture comes from: {region, side} (camera pixels, picture
   *  side); the caller cuts and encodes that square, then calls makeKeyframe. */
  plan(points, width, height) {
    const region = keyframeRegion(points, width, height);
    const side = Math.min(Math.max(roundHalfEven(region.size), 64), this.maxSide);
    return { region, side };
  }

  /** Start a new epoch with this frame; picture = {format, bytes} of plan's square.  Returns
   *  the KEYFRAME message.  The frame is then also encoded as usual (its seq is the next). */
  makeKeyframe(points, plan, timestamp, picture) {
    this.region = plan.region;
    this.side = plan.side;
    const landmarks = this.toPicture(points).map(
      (v) => roundHalfEven(v * SPEC.landmarkUnits) / SPEC.landmarkUnits);
    this.epoch = (this.epoch + 1) % 256;
    this.keyframe = {
      epoch: this.epoch,
      seq: this.nextSeq,
      timestampMs: roundHalfEven(timestamp * 1000) % 2 ** 32,
      fps: Math.round(this.fps * 100) / 100,
      imageFormat: picture.format,
      region: { cx: Math.fround(plan.region.cx), cy: Math.fround(plan.region.cy),
                size: Math.fround(plan.region.size) },
      side: plan.side,
      landmarks,
      image: picture.bytes,
    };
    this.keyframe.bytes = keyframeBytes(this.keyframe);
    this.reference = faceState(landmarks);
    this.keyframeTime = timestamp;
    this.history = []; // expressions are measured from the keyframe's face
    this.stats.keyframes += 1;
    this.stats.keyframeBytes += this.keyframe.bytes.length;
    return this.keyframe.bytes;
  }

  /** (478 x 3) camera-pixel landmarks in keyframe-picture pixels. */
  toPicture(points) {
    return transform(points, this.region, this.side);
  }

  /** The exact motion of a frame relative to the keyframe (nothing is sent). */
  analyse(points) {
    return measure(faceState(this.toPicture(points)), this.reference);
  }

  /** This frame's MOTION bytes, or null before the first keyframe or without a face.  Every
   *  call is one camera frame and advances the sequence number. */
  encode(points, timestamp) {
    const seq = this.nextSeq;
    this.nextSeq = (seq + 1) % SPEC.seqModulo;
    this.stats.frames += 1;
    if (this.keyframe === null || points === null) {
      if (points === null) this.stats.noFace += 1;
      return null;
    }
    const motion = this.analyse(points);
    this.history.push(motion.expression);
    if (this.history.length > SPEC.basis.history) this.history.shift();
    const fields = quantize(motion, this.active);
    const packet = { seq, epoch: this.epoch % SPEC.epochModulo,
                     jitterMs: this.jitter(seq, timestamp), ...fields };
    const bytes = motionBytes(packet);
    this.stats.packets += 1;
    this.stats.packetBits += 8 * bytes.length;
    return bytes;
  }

  /** Advance the sequence number to the camera frame due at `timestamp` (the frames this
   *  sender never tracked become gaps the receiver conceals); returns how many were skipped. */
  skipTo(timestamp) {
    if (this.keyframe === null) return 0;
    const frame = roundHalfEven((timestamp - this.keyframeTime) * this.fps);
    const due = (((this.keyframe.seq + frame) % SPEC.seqModulo) + SPEC.seqModulo) % SPEC.seqModulo;
    const ahead = seqDifference(due, this.nextSeq);
    if (ahead <= 0) return 0;
    this.nextSeq = (this.nextSeq + ahead) % SPEC.seqModulo;
    this.stats.frames += ahead;
    this.stats.skipped += ahead;
    return ahead;
  }

  jitter(seq, timestamp) {
    const k = this.keyframe;
    const nominal = k.timestampMs + roundHalfEven((1000 * seqDifference(seq, k.seq)) / k.fps);
    const limit = SPEC.maxJitterMs / 2;
    return Math.max(-limit, Math.min(limit, roundHalfEven(timestamp * 1000) - nominal));
  }

  /** A BASIS message for these directions (K rows of NUM_COEFFICIENTS), or null if there are
   *  none.  Without `vectors`, they are learned (learnBasis) from the history, the frames
   *  encoded since the keyframe.  Send it reliably; packets keep using the old basis until
   *  acknowledge says the receiver has this one, so none ever needs a basis still in flight. */
  proposeBasis(vectors = null) {
    if (vectors === null) {
      if (this.history.length < 2) return null;
      vectors = learnBasis(this.history);
    }
    if (vectors.length === 0) return null;
    const basis = makeBasis(this.nextBasisId, vectors);
    this.nextBasisId = (this.nextBasisId % 3) + 1;
    this.bases.set(basis.id, basis);
    this.stats.bases += 1;
    this.stats.basisBytes += basis.bytes.length;
    return basis.bytes;
  }

  /** The receiver holds basis `id` (its BASIS_ACK): use it from the next packet on. */
  acknowledge(id) {
    if (this.bases.has(id)) this.active = this.bases.get(id);
  }

  /** True: make a new keyframe; false: resend the current one. */
  wantsNewKeyframe(request) {
    return this.keyframe === null || request.fresh || request.epoch === this.epoch;
  }
}
