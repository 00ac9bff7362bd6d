// One-Euro filter (Casiez, Roussel & Vogel, CHI 2012), as models/smoothing.py: smooths hard
// when the landmarks are still (no jitter), barely when they move fast (no lag).

const alpha = (cutoff, dt) => 1 / (1 + 1 / (2 * Math.PI * cutoff) / dt);

export class OneEuroFilter {
  constructor({ min_cutoff: minCutoff = 1, beta = 0.05, d_cutoff: dCutoff = 1 } = {}) {
    this.minCutoff = minCutoff;
    this.beta = beta;
    this.dCutoff = dCutoff;
    this.reset();
  }

  reset() {
    this.x = null;
    this.dx = null;
    this.t = null;
  }

  /** Smoothed copy of x (a Float64Array) sampled at time t (seconds). */
  filter(x, t) {
    if (this.x === null || t <= this.t) {
      this.x = Float64Array.from(x);
      this.dx = new Float64Array(x.length);
      this.t = t;
      return Float64Array.from(x);
    }
    const dt = t - this.t;
    const aD = alpha(this.dCutoff, dt);
    const out = new Float64Array(x.length);
    for (let i = 0; i < x.length; i++) {
      const dx = (x[i] - this.x[i]) / dt;
      const dxHat = this.dx[i] + aD * (dx - this.dx[i]);
      const cutoff = this.minCutoff + this.beta * Math.abs(dxHat);
      out[i] = this.x[i] + alpha(cutoff, dt) * (x[i] - this.x[i]);
      this.dx[i] = dxHat;
    }
    this.x = Float64Array.from(out);
    this.t = t;
    return out;
  }
}
