"""Thin-plate splines (Bookstein 1989) for dense flow from sparse keypoints.

The spline maps points of the *driving* (output) frame to where they come from in the source
frame: f(p) = a0 + A p + sum_i w_i U(|p - c_i|), U(r) = r^2 log r^2, with the controls c_i at
the driving keypoints.  Its weights solve a small dense linear system that changes every frame.
That solve stays outside the exported graph, in float64 numpy: torch.linalg.solve does not
export to ONNX, and float32 inverses inside the graph were too inaccurate (see TOOLING.md).
The graph only *evaluates* the spline, which is cheap and exports cleanly.
"""

from __future__ import annotations

import numpy as np
import torch


def kernel(r2: torch.Tensor) -> torch.Tensor:
    """U as a function of the squared distance: r^2 log r^2 (0 at r = 0).

    The floor is a clamp, not ``+ 1e-9``: the ONNX optimiser folds a tiny added constant away,
    which turned a keypoint landing exactly on a grid point into 0 * log(0) = NaN.
    """
    return r2 * torch.log(r2.clamp(min=1e-9))


def solve(
    control: np.ndarray, values: np.ndarray, regularization: float | np.ndarray = 1e-4
) -> np.ndarray:
    """Spline coefficients, (N + 3, 2): N kernel weights, then the affine part [a0; A^T].

    ``control`` (N, 2) and ``values`` (N, 2) are in the same normalised frame ([-1, 1]).
    ``regularization`` (scalar, or one value per control) relaxes interpolation into
    smoothing, which keeps the system well-posed when two controls nearly coincide (a closed
    eye, closed lips) and lets distrusted controls bend rather than fold the warp.
    """
    c = np.asarray(control, dtype=np.float64)
    n = len(c)
    d2 = ((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    k = d2 * np.log(d2 + 1e-9) + np.diag(np.broadcast_to(regularization, (n,)))
    p = np.concatenate([np.ones((n, 1)), c], axis=1)
    system = np.zeros((n + 3, n + 3))
    system[:n, :n] = k
    system[:n, n:] = p
    system[n:, :n] = p.T
    rhs = np.zeros((n + 3, 2))
    rhs[:n] = values
    return np.linalg.solve(system, rhs)


def evaluate(points: torch.Tensor, control: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Spline values at ``points``.

    points (B, P, 2), control (B, N, 2), coeffs (B, N + 3, 2) -> (B, P, 2).
    """
    n = control.shape[1]
    # |p - c|^2 expanded into a matrix product: far cheaper than a broadcast (B, P, N, 2) tensor.
    cross = points @ control.transpose(1, 2)  # (B, P, N)
    p2 = (points * points).sum(-1, keepdim=True)
    c2 = (control * control).sum(-1)[:, None, :]
    d2 = (p2 + c2 - 2 * cross).clamp(min=0.0)
    nonlinear = kernel(d2) @ coeffs[:, :n]
    affine = coeffs[:, n : n + 1] + points @ coeffs[:, n + 1 :]
    return nonlinear + affine
