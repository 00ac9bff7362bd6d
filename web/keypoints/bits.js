// Bits and checksums of the keypoint bitstream (models/codec.py): MSB-first bit strings,
// Exp-Golomb codes, CRC-8 (polynomial 0x07) and zlib's CRC-32.

const CRC8 = (() => {
  const table = new Uint8Array(256);
  for (let byte = 0; byte < 256; byte++) {
    let crc = byte;
    for (let i = 0; i < 8; i++) crc = crc & 0x80 ? ((crc << 1) ^ 0x07) & 0xff : (crc << 1) & 0xff;
    table[byte] = crc;
  }
  return table;
})();

/** CRC-8, polynomial 0x07, initial value 0, no reflection. */
export function crc8(bytes) {
  let crc = 0;
  for (const byte of bytes) crc = CRC8[crc ^ byte];
  return crc;
}

const CRC32 = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** zlib.crc32 of the bytes, as an unsigned 32-bit number. */
export function crc32(bytes) {
  let crc = 0xffffffff;
  for (const byte of bytes) crc = CRC32[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

const bitLength = (v) => 32 - Math.clz32(v);

/** Most significant bit first; values up to 2^32 - 1. */
export class BitWriter {
  constructor() {
    this.bitsOut = [];
  }

  write(value, bits) {
    if (!Number.isInteger(value) || value < 0 || value >= 2 ** bits) {
      throw new RangeError(`${value} does not fit in ${bits} bits`);
    }
    for (let i = bits - 1; i >= 0; i--) this.bitsOut.push(Math.floor(value / 2 ** i) % 2);
  }

  /** Order-k Exp-Golomb code of value >= 0. */
  ue(value, k) {
    const w = value + 2 ** k;
    if (w >= 2 ** 32) throw new RangeError(`${value} is too large to code`);
    const n = bitLength(w) - 1;
    this.write(0, n - k);
    this.write(w, n + 1);
  }

  /** Order-k Exp-Golomb code of a signed value, zig-zag mapped (v > 0: 2v - 1, else -2v). */
  se(value, k) {
    this.ue(value > 0 ? 2 * value - 1 : -2 * value, k);
  }

  get bits() {
    return this.bitsOut.length;
  }

  /** The bits so far, padded with zero bits to whole bytes. */
  toBytes() {
    const out = new Uint8Array(Math.ceil(this.bitsOut.length / 8));
    this.bitsOut.forEach((bit, i) => { out[i >> 3] |= bit << (7 - (i & 7)); });
    return out;
  }
}

/** Python's round(): to the nearest integer, ties to even (numpy's np.round too). */
export function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}
