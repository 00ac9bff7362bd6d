// The keyframe's picture: the square the encoder planned, cut from a camera frame and encoded
// as WebP (JPEG where the browser cannot encode WebP), as models/crop.cut and
// models/codec.encode_picture do on the server.

/** A canvas of side x side holding `region` (camera pixels) of `source`.
 *
 *  cv2.warpAffine samples crop pixel u at camera coordinate u / s + (cx - size / 2) with pixel
 *  centres on integers; drawImage maps pixel areas, so its source rectangle starts half a
 *  pixel over (0.5 - 0.5 / s) to land on the same points.  Outside the frame the picture is
 *  mirrored (cut's BORDER_REFLECT_101, up to one pixel), never left transparent. */
export function cutPicture(source, width, height, region, side) {
  const s = side / region.size;
  let sx = region.cx - region.size / 2 + 0.5 - 0.5 / s;
  let sy = region.cy - region.size / 2 + 0.5 - 0.5 / s;
  let image = source;
  if (sx < 0 || sy < 0 || sx + region.size > width || sy + region.size > height) {
    image = mirrored(source, width, height);
    sx += width;
    sy += height;
  }
  const canvas = document.createElement("canvas");
  canvas.width = side;
  canvas.height = side;
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = "high";
  context.drawImage(image, sx, sy, region.size, region.size, 0, 0, side, side);
  return canvas;
}

/** The frame with mirror copies around it (3 x 3 tiles), for regions reaching outside it. */
function mirrored(source, width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = 3 * width;
  canvas.height = 3 * height;
  const context = canvas.getContext("2d");
  for (const ty of [-1, 0, 1]) {
    for (const tx of [-1, 0, 1]) {
      context.setTransform(tx === 0 ? 1 : -1, 0, 0, ty === 0 ? 1 : -1,
                           tx === 0 ? width : tx < 0 ? width : 3 * width,
                           ty === 0 ? height : ty < 0 ? height : 3 * height);
      context.drawImage(source, 0, 0, width, height);
    }
  }
  return canvas;
}

/** {format: "webp" | "jpeg", bytes: Uint8Array} of a canvas; quality 0..100. */
export async function encodePicture(canvas, format = "webp", quality = 90) {
  const blob = await new Promise((resolve) => {
    canvas.toBlob(resolve, `image/${format}`, quality / 100);
  });
  // A browser that cannot encode the format falls back to PNG: ask for JPEG then.
  if (!blob || blob.type !== `image/${format}`) {
    if (format === "jpeg") throw new Error("this browser cannot encode a JPEG picture");
    return encodePicture(canvas, "jpeg", quality);
  }
  return { format, bytes: new Uint8Array(await blob.arrayBuffer()) };
}
