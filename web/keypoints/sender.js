// A camera's frames as keypoint messages, in the browser: service.compression.Sender without
// the speaker basis.  The first frame with a face becomes the keyframe (its picture cut from
// that very frame); then one motion packet per tracked frame.  It answers the receiver's
// keyframe requests, and makes a fresh keyframe when the person asks (Re-centre).

import { Encoder, parseKeyframeRequest } from "./codec.js";
import { cutPicture, encodePicture } from "./picture.js";

export class Sender {
  constructor(fps, options = {}) {
    this.encoder = new Encoder(fps, options);
    this.wantKeyframe = true;
  }

  /** Messages for one tracked frame: {reliable: [keyframe?], unreliable: [motion?]}.
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
    }
    const packet = this.encoder.encode(points, timestamp);
    if (packet !== null) out.unreliable.push(packet);
    return out;
  }

  /** A message from the receiver; returns what to send back reliably (a resent keyframe). */
  control(data) {
    const request = parseKeyframeRequest(data);
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
