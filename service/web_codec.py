"""The keypoint codec's constants for the browser's encoder (``web/keypoints/spec.js``).

The page's sender (``web/keypoints/``, session mode ``keypoints-device``) must quantize and
code exactly as :mod:`models.codec` specifies, against the same contour basis and landmark sets.
Rather than copying numbers by hand into JavaScript, where they would drift from the Python that
defines them, they are written out of the Python modules into one generated ES module, committed
so the page needs no build step.  ``tests/web/test_device_codec.py`` fails when the committed
file differs from what this module generates now; regenerate with
``.venv/bin/python -m service.web_codec``.

Defaults are read from the signatures that define them (``_default``): the keyframe's format
and size, and the speaker basis' (``learn_basis``'s rank and energy, the encoder's history,
``service.compression.Sender``'s ``basis_after`` / ``basis_every``), which the page's sender
uses as its own.

The contour basis is exported as each part's curve (``modes`` x points, float64 written
exactly), not the full 76 x 146 x 2 tensor: :func:`models.contour_basis.basis` only places those
curves block-diagonally, which the JavaScript does the same way.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path

from models import codec, codec_stream, contour_basis, crop, landmarks, smoothing
from service import compression, relay

SPEC_PATH = Path(__file__).resolve().parents[1] / "web" / "keypoints" / "spec.js"


def _default(function: Callable[..., object], name: str) -> object:
    """A parameter's default value, read from the Python so the two ends cannot disagree."""
    return inspect.signature(function).parameters[name].default


def _curve(part: contour_basis.Part) -> list[list[float]]:
    basis = contour_basis.basis()
    start = sum(len(p.indices) for p in contour_basis.PARTS[: contour_basis.PARTS.index(part)])
    row = sum(p.size for p in contour_basis.PARTS[: contour_basis.PARTS.index(part)])
    block = basis[row : row + part.modes, start : start + len(part.indices), 0]
    return [[float(v) for v in r] for r in block]


def spec() -> dict[str, object]:
    """Everything the browser's encoder needs from the Python definition, as plain JSON."""
    return {
        "version": codec.VERSION,
        "messageTypes": {kind.name: int(kind) for kind in codec.MessageType},
        "seqModulo": codec.SEQ_MODULO,
        "epochModulo": codec.EPOCH_MODULO,
        "noEpoch": codec.NO_EPOCH,
        "steps": {
            "rotation": codec.ROTATION_STEP,
            "scale": codec.SCALE_STEP,
            "translation": codec.TRANSLATION_STEP,
            "expression": codec.EXPRESSION_STEP,
        },
        "deadZone": codec.DEAD_ZONE,
        "k": {
            "jitter": codec._K_JITTER,
            "rotation": list(codec._K_ROTATION),
            "scale": codec._K_SCALE,
            "translation": codec._K_TRANSLATION,
            "basis": codec._K_BASIS,
            "part": codec._K_PART,
        },
        "maxJitterMs": codec.MAX_JITTER_MS,
        "maxBasis": codec.MAX_BASIS,
        "basis": {  # the speaker basis: how it is learned, and when the sender sends one
            "maxRank": _default(codec_stream.learn_basis, "max_rank"),
            "energy": _default(codec_stream.learn_basis, "energy"),
            "history": _default(codec_stream.Encoder, "history"),
            "after": _default(compression.Sender, "basis_after"),
            "every": _default(compression.Sender, "basis_every"),
        },
        "maxImageSide": codec.MAX_IMAGE_SIDE,
        "landmarkUnits": codec.LANDMARK_UNITS,
        "imageFormats": list(codec.IMAGE_FORMATS),
        "numLandmarks": landmarks.NUM_LANDMARKS,
        "faceOval": list(landmarks.FACE_OVAL),
        "rigid": list(landmarks.RIGID),
        "rigidPairs": [list(p) for p in landmarks.RIGID_PAIRS],
        "midlineTop": list(landmarks.MIDLINE_TOP),
        "midlineBottom": list(landmarks.MIDLINE_BOTTOM),
        "faceBox": {
            "scale": _default(crop.face_box, "scale"),
            "lift": _default(crop.face_box, "lift"),
        },
        "regionScale": codec_stream.REGION_SCALE,
        "keyframe": {
            "format": _default(codec_stream.Encoder, "image_format"),
            "quality": _default(codec_stream.Encoder, "quality"),
            "minSide": 64,  # Encoder.make_keyframe clips the side to [64, max_side]
            "maxSide": _default(codec_stream.Encoder, "max_side"),
            "scalePerOutputPixel": relay.KEYFRAME_SCALE,
        },
        "parts": [
            {
                "name": p.name,
                "indices": list(p.indices),
                "closed": p.closed,
                "modes": p.modes,
                "curve": _curve(p),
            }
            for p in contour_basis.PARTS
        ],
        "codedPoints": list(contour_basis.CODED_POINTS),
        "numCoefficients": contour_basis.NUM_COEFFICIENTS,
        "smoothing": smoothing.LANDMARK_SMOOTHING,
    }


def render() -> str:
    """The generated module's text (deterministic: same Python, same bytes)."""
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}," for key, value in spec().items()]
    return "\n".join(
        [
            "// GENERATED by `python -m service.web_codec` from models/codec.py,",
            "// models/codec_stream.py, models/contour_basis.py, models/landmarks.py and",
            "// service/compression.py's Sender: do not edit.",
            "// tests/web/test_device_codec.py checks that it matches the Python.",
            "export const SPEC = Object.freeze({",
            *lines,
            "});",
            "",
        ]
    )


def main() -> None:
    SPEC_PATH.write_text(render(), encoding="utf-8")


if __name__ == "__main__":
    main()
