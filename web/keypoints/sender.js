// A camera's frames as keypoint messages, in the browser: service.compression.Sender.  The
// first frame with a face becomes the keyframe (its picture cut from that very frame); then
// one motion packet per tracked frame.  A speaker basis is learned from the sender's own frames
// `basisAfter` seconds after the keyframe and renewed every `basisEvery` (0: never; the
// defaults are Python's, from spec.js); packets use it once the receiver acknowledged it.  It
// answers the receiver's keyframe requests, and makes a fresh keyframe when the person asks
// (Re-centre).

import { parseBasisAck } from "./basis.js";
import { Encoder, MessageType, messageType, parseKeyframeRequest } from "./codec.js";
import { cutPicture, encodePicture } from "./picture.js";
import { SPEC } from "./spec.js";

export class Sender {
  constructor(fps, { basisAfter = SPEC.basis.after, basisEvery = SPEC.basis.every,
                     ...options } = {}) {
    this.encoder = new Encoder(fps, options);
    this.wantKeyframe = true;
    this.basisAfter = basisAfter;
    this.basisEvery = basisEvery;
    this.nextBasis = null; // sender-clock time (s) of the next basis
  }

  /** Messages for one tracked frame: {reliable: [keyframe?, basis?], unreliable: [motion?]}.
   *  `source` is the frame the landmarks were measured on (width x height pixels). */
  async frame(points, timestamp, source, width, height) {
    const out = { reliable: [], unreliable: [] };
    this.encoder.skipTo(timestamp); // frames never tracked become gaps, not clock drift
    if (this.wantKeyframe && points !== null) {
      const plan = this.encoder.plan(points, width, height);
      const canvas = cutPicture(source, width, height, plan.region, plan.side);
      const picture = await encodePicture(canvas, this.encoder.imageFormat, this.encoder.quality);
      out.reliable.push(this.encoder.makeKeyframe(points, plan, timestamp, picture));
      this.wantKeyframe = false;
      this.nextBasis = this.basisAfter > 0 ? timestamp + this.basisAfter : null;
    }
    const packet = this.encoder.encode(points, timestamp);
    if (packet !== null) out.unreliable.push(packet);
    if (this.nextBasis !== null && timestamp >= this.nextBasis) {
      const basis = this.encoder.proposeBasis();
      if (basis !== null) out.reliable.push(basis);
      this.nextBasis = this.basisEvery > 0 ? timestamp + this.basisEvery : null;
    }
    return out;
  }

  /** A message from the receiver (a keyframe request, a basis acknowledgement); returns what
   *  to send back reliably (a resent keyframe). */
  control(data) {
    const kind = messageType(data);
    if (kind === MessageType.BASIS_ACK) {
      const id = parseBasisAck(data);
      if (id !== null) this.encoder.acknowledge(id);
      return [];
    }
    const request = kind === MessageType.KEYFRAME_REQUEST ? parseKeyframeRequest(data) : null;
    if (request === null) return [];
    if (this.encoder.wantsNewKeyframe(request)) {
      this.wantKeyframe = true;
      return [];
    }
    return [this.encoder.keyframe.bytes];
  }

  /** A fresh keyframe with the next frame that has a face. */
  recentre() {
    this.wantKeyframe = true;
  }
}
