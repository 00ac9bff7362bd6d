"""The warping generator: a source face re-posed by sparse driving keypoints.

Following the warping family (X2Face, Monkey-Net, FOMM, TPS motion): the output is the source
image sampled along a dense *backward* flow, here a thin-plate spline through the face-mesh
keypoints plus fixed anchors on the crop border.  Three things a plain warp gets wrong are
handled explicitly:

* background: only the head region (its source position united with its warped position) is
  taken from the warp, so the far background stays exactly still and the place the head
  leaves is filled by the smoothly dragged surroundings, never by a ghost of the head;
* the mouth interior: when the driver opens a mouth that is closed in the source, the warp
  can only stretch lip skin into the gap.  The gap between the driving inner lips is painted
  as a mouth cavity with an upper (and faint lower) row of teeth, shaded from the source's
  own lip and skin colours.  Where the source mouth is itself open, its real interior is warped;
* eyes: a blink is the upper lid keypoints meeting the lower ones, which the spline renders by
  pulling lid skin down over the eye.  (Opening eyes that are closed in the source is not
  possible without a learned model: the source has no eyeball pixels to warp.)

The module holds no learned weights; it is an nn.Module so it exports to ONNX and runs under
any engine.  Per-frame inputs are the driving keypoints and their spline coefficients (solved
in float64 outside the graph, see tps.py); everything else is the cached source embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models import tps


@dataclass(frozen=True)
class GeneratorConfig:
    """Shape of the generator; part of the engine cache key."""

    size: int = 256  # output side, pixels
    grid: int = 64  # side of the grid the spline is evaluated on before bilinear upsampling
    # Keypoints: the warp subset plus border anchors; fixed so the exported graph is static.
    num_controls: int = 0
    lip_points: int = 11  # points per inner-lip polyline (upper and lower)

    def inputs(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every graph input (batch 1), in call order."""
        s, n, m = self.size, self.num_controls, self.lip_points
        return {
            "source_image": (1, 3, s, s),
            "head_mask": (1, 1, s, s),
            "source_mouth": (1, 1, s, s),
            "mouth_colors": (1, 2, 3),
            "control": (1, n, 2),
            "coeffs": (1, n + 3, 2),
            "lips": (1, 2, m, 2),
        }


def normalized_centers(n: int) -> torch.Tensor:
    """Pixel-centre coordinates of an n-pixel axis in [-1, 1] (grid_sample, align_corners=False)."""
    return (torch.arange(n, dtype=torch.float32) + 0.5) * (2.0 / n) - 1.0


def _polyline_y(x: torch.Tensor, line: torch.Tensor) -> torch.Tensor:
    """y of a polyline at each x.  x (S,), line (B, M, 2) -> (B, S); 0 outside its x range."""
    a, b = line[:, :-1, None, :], line[:, 1:, None, :]  # (B, M-1, 1, 2)
    xa, xb = a[..., 0], b[..., 0]
    lo, hi = torch.minimum(xa, xb), torch.maximum(xa, xb)
    w = ((x - xa) / (xb - xa + 1e-6)).clamp(0.0, 1.0)
    y = a[..., 1] + w * (b[..., 1] - a[..., 1])  # (B, M-1, S)
    inside = ((x >= lo) & (x < hi)).to(x.dtype)
    return (inside * y).sum(1) / inside.sum(1).clamp(min=1.0)


def sample(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling with border padding: F.grid_sample(align_corners=False) semantics.

    Written with gathers because onnxruntime's CPU GridSample kernel is many times slower
    than gathering the four neighbours (and TensorRT runs both well).
    image (B, C, H, W), grid (B, h, w, 2) normalised -> (B, C, h, w).
    """
    b, c, h, w = image.shape
    x = (((grid[..., 0] + 1) * w - 1) / 2).clamp(0, w - 1)
    y = (((grid[..., 1] + 1) * h - 1) / 2).clamp(0, h - 1)
    x0, y0 = x.floor(), y.floor()
    wx, wy = (x - x0)[:, None], (y - y0)[:, None]
    # Indices are clamped again as integers: whatever a backend does with a float at the very
    # edge (or a NaN), a gather never reads outside the image.
    x0i, y0i = x0.long().clamp(0, w - 1), y0.long().clamp(0, h - 1)
    x1i, y1i = (x0i + 1).clamp(max=w - 1), (y0i + 1).clamp(max=h - 1)
    flat = image.reshape(b, c, h * w)

    def at(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        index = (yi * w + xi).reshape(b, 1, -1).expand(b, c, -1)
        return torch.gather(flat, 2, index).reshape(b, c, grid.shape[1], grid.shape[2])

    top = at(y0i, x0i) * (1 - wx) + at(y0i, x1i) * wx
    bottom = at(y1i, x0i) * (1 - wx) + at(y1i, x1i) * wx
    return top * (1 - wy) + bottom * wy


class WarpingGenerator(nn.Module):
    """Source embedding + driving keypoints -> (1, S, S, 3) uint8 RGB frame."""

    grid_points: torch.Tensor  # (1, G*G, 2) coarse grid, normalised
    pixel_centers: torch.Tensor  # (S,) output pixel centres along one axis, normalised

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        g = normalized_centers(config.grid)
        gy, gx = torch.meshgrid(g, g, indexing="ij")
        self.register_buffer("grid_points", torch.stack([gx, gy], -1).reshape(1, -1, 2))
        self.register_buffer("pixel_centers", normalized_centers(config.size))
        self.softness = 1.5 * 2.0 / config.size  # mouth-edge softness: 1.5 px, normalised

    def flow(
        self, control: torch.Tensor, coeffs: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Backward flow (B, S, S, 2) and the source masks carried along it (B, C, S, S).

        Both the spline and the (smooth) masks are evaluated on the coarse grid and upsampled
        together: one small sampling pass instead of a full-resolution one per mask.
        """
        b, s, g = control.shape[0], self.config.size, self.config.grid
        coarse = tps.evaluate(self.grid_points.expand(b, -1, -1), control, coeffs)
        coarse = coarse.reshape(b, g, g, 2)
        carried = sample(masks, coarse)
        both = torch.cat([coarse.permute(0, 3, 1, 2), carried], dim=1)
        dense = F.interpolate(both, size=(s, s), mode="bilinear", align_corners=False)
        return dense[:, :2].permute(0, 2, 3, 1), dense[:, 2:]

    def mouth(self, lips: torch.Tensor, colors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The driving mouth's interior: a soft mask (B, 1, S, S) and its paint (B, 3, S, S).

        lips (B, 2, M, 2): upper then lower inner-lip polyline, corner to corner, normalised.
        """
        px, tau = self.pixel_centers, self.softness
        upper, lower = lips[:, 0], lips[:, 1]
        y_up = _polyline_y(px, upper)[:, None, None, :]  # (B, 1, 1, S), a function of x
        y_low = _polyline_y(px, lower)[:, None, None, :]
        x_a = torch.minimum(upper[:, 0, 0], upper[:, -1, 0])[:, None, None, None]
        x_b = torch.maximum(upper[:, 0, 0], upper[:, -1, 0])[:, None, None, None]
        x = px[None, None, None, :]
        y = px[None, None, :, None]
        inside = (
            torch.sigmoid((y - y_up) / tau)
            * torch.sigmoid((y_low - y) / tau)
            * torch.sigmoid((x - x_a) / tau)
            * torch.sigmoid((x_b - x) / tau)
        )
        # Teeth: a band under the upper lip (and a fainter one above the lower lip), as tall as
        # a fraction of the opening but never taller than real teeth relative to mouth width,
        # and fading towards the corners where the cheeks hide them.
        opening = (y_low - y_up).clamp(min=1e-4)
        width = (x_b - x_a).clamp(min=1e-4)
        tooth = torch.minimum(0.35 * opening, 0.13 * width)
        across = ((x - x_a) / width - 0.5).abs()
        visible = torch.sigmoid((0.38 - across) / 0.05)
        upper_teeth = torch.sigmoid((tooth - (y - y_up)) / tau) * visible
        lower_teeth = 0.45 * torch.sigmoid((0.7 * tooth - (y_low - y)) / tau) * visible
        teeth = (upper_teeth + lower_teeth).clamp(max=1.0)
        depth = 1.0 - 0.5 * (1.0 - ((y - y_up) / opening - 0.5).abs() * 2).clamp(0.0, 1.0)
        cavity = colors[:, 0, :, None, None] * depth
        paint = cavity * (1 - teeth) + colors[:, 1, :, None, None] * teeth
        return inside, paint

    def forward(
        self,
        source_image: torch.Tensor,  # (B, 3, S, S) float RGB in [0, 1]
        head_mask: torch.Tensor,  # (B, 1, S, S) soft mask of head and hair in the source
        source_mouth: torch.Tensor,  # (B, 1, S, S) the source's own open-mouth interior
        mouth_colors: torch.Tensor,  # (B, 2, 3): cavity colour, teeth colour
        control: torch.Tensor,  # (B, N, 2) driving keypoints + anchors, normalised
        coeffs: torch.Tensor,  # (B, N + 3, 2) spline coefficients (tps.solve)
        lips: torch.Tensor,  # (B, 2, M, 2) driving inner lips, normalised
    ) -> torch.Tensor:
        flow, carried = self.flow(control, coeffs, torch.cat([head_mask, source_mouth], dim=1))
        warped = sample(source_image, flow)
        region = torch.maximum(head_mask, carried[:, :1])
        out = warped * region + source_image * (1 - region)
        inside, paint = self.mouth(lips, mouth_colors)
        fill = inside * (1 - carried[:, 1:])  # paint only where the source has no open mouth
        out = out * (1 - fill) + paint * fill
        return torch.round(out.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1)
