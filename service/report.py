"""Rendering an evaluation report (see service/evaluation.py): Markdown tables and PNG figures.

Kept apart from the evaluation so that the numbers can be re-rendered from a saved report.json
without running anything.  Figures use matplotlib's object API (``Figure``, no pyplot): no
global backend state, safe in threads and tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    better: str  # "↑" higher is better, "↓" lower is better
    fmt: str = "{:.3f}"
    scale: float = 1.0
    zoom: bool = False  # bar charts: start the axis near the values, not at 0

    def header(self) -> str:
        return f"{self.label} {self.better}"

    def cell(self, scores: dict[str, float]) -> str:
        value = scores.get(self.key)
        return "–" if value is None else self.fmt.format(value * self.scale)


SELF_COLUMNS = (
    Column("l1", "L1", "↓", "{:.4f}"),
    Column("psnr", "PSNR dB", "↑", "{:.2f}", zoom=True),
    Column("ssim", "SSIM", "↑", zoom=True),
    Column("akd", "AKD (IOD)", "↓", "{:.4f}"),
    Column("aed", "AED", "↓"),
    Column("face_rate", "face %", "↑", "{:.0f}", 100.0),
    Column("tracked", "tracked %", "↑", "{:.0f}", 100.0),
)
CROSS_COLUMNS = (
    Column("csim", "CSIM", "↑", zoom=True),
    Column("id_dist", "ID dist", "↓"),
    Column("pose_err", "pose err °", "↓", "{:.2f}"),
    Column("yaw_err", "yaw °", "↓", "{:.2f}"),
    Column("pitch_err", "pitch °", "↓", "{:.2f}"),
    Column("roll_err", "roll °", "↓", "{:.2f}"),
    Column("expr_err", "expr err", "↓", "{:.4f}"),
    Column("gaze_err", "gaze err", "↓", "{:.4f}"),
    Column("leakage", "leakage", "↓"),
    Column("pose_err_abs", "pose abs °", "↓", "{:.2f}"),
    Column("expr_err_abs", "expr abs", "↓", "{:.4f}"),
    Column("face_rate", "face %", "↑", "{:.0f}", 100.0),
)
# The columns shown in the per-clip / per-source tables and the bar charts.
SELF_MAIN = ("l1", "psnr", "ssim", "akd", "aed")
CROSS_MAIN = ("csim", "id_dist", "pose_err", "expr_err", "gaze_err", "leakage")

_NOTES = """\
**Methods.** `static`: the source crop repeated (identity ceiling, zero motion).
`absolute`: the generator driven by the driver's own landmarks, no identity transfer (the
leakage ablation).  `generator-N`: the pipeline as shipped (landmark transformer, relative
motion) at N² px.  All scores are computed at the evaluation size.  In self-reenactment the
source *is* the driver's reference frame, so `absolute` and the generator at the evaluation
size give the same frames up to rounding (a consistency check, not a bug).

**Self-reenactment** (frame 0 of a clip is the source, the clip is the driver and the ground
truth): L1 (fraction of 255), PSNR, SSIM on the face crop; AKD = mean distance of the warp
keypoints (face-mesh contours) in units of the ground truth's inter-ocular distance; AED =
Euclidean distance of dlib face embeddings, output vs ground truth (same person < 0.6).

**Cross-reenactment** (each portrait × each clip): CSIM = cosine similarity of dlib embeddings,
portrait vs output (dlib's embeddings all lie in a narrow cone: different people still score
≈ 0.8–0.9, the same person ≈ 0.97+); ID dist = their Euclidean distance (< 0.6 = same person).
pose / expr / gaze err = how far the output's *change since the first frame* is from the
driver's (head rotation in degrees; mean absolute difference of the 8 expression action units;
iris centres in their eyes, in eye widths);
`*_abs` compare absolute values instead.  leakage = how far the output's face proportions
(rigid landmarks, pose-free) moved from the portrait's (0) toward the driver's (1), a projection
on that direction, so measurement noise averages out instead of adding a floor.
face % = frames where the evaluation's face mesh finds a face in the output; tracked % =
frames where the pipeline found the driver's face.
"""


def _table(
    rows: Sequence[tuple[Sequence[str], dict[str, float]]],
    keys: Sequence[str],
    columns: Sequence[Column],
) -> str:
    """A Markdown table: ``keys`` name the leading text columns of each row."""
    header = [*keys, *(c.header() for c in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for labels, scores in rows:
        lines.append("| " + " | ".join([*labels, *(c.cell(scores) for c in columns)]) + " |")
    return "\n".join(lines) + "\n"


def _by_method(summary: dict[str, dict[str, float]]) -> list[tuple[Sequence[str], dict]]:
    return [((method,), scores) for method, scores in summary.items()]


def _by_group(groups: dict[str, dict[str, dict[str, float]]]) -> list[tuple[Sequence[str], dict]]:
    return [
        ((name, method), scores)
        for name, by_method in groups.items()
        for method, scores in by_method.items()
    ]


def _pick(columns: Sequence[Column], keys: Sequence[str]) -> list[Column]:
    return [c for c in columns if c.key in keys]


def markdown(report: dict) -> str:
    """report.md: configuration, the two summary tables, per-clip and per-source tables."""
    config, timing = report["config"], report.get("timing", {})
    parts = [
        "# Reenactment quality report\n",
        f"Data `{config['data']}`: {len(config['clips'])} clips × {len(config['sources'])} "
        f"portraits, {config['frames_per_clip']} frames sampled per clip (frame 0 = reference), "
        f"dlib embeddings on {config['identity_frames']['self']} (self) / "
        f"{config['identity_frames']['cross']} (cross) frames per pair and method; "
        f"evaluation size {config['size']}² px.  Wall time {timing.get('wall_s', '?')} s.\n",
        _failures(config.get("failed", [])),
        _NOTES,
        "## Self-reenactment (mean over clips)\n",
        _table(_by_method(report["self"]["summary"]), ["method"], SELF_COLUMNS),
        "## Cross-reenactment (mean over portrait × clip pairs)\n",
        _table(_by_method(report["cross"]["summary"]), ["method"], CROSS_COLUMNS),
        "## Self-reenactment per clip\n",
        _table(_by_group(report["self"]["per_clip"]), ["clip", "method"], SELF_COLUMNS),
        "## Cross-reenactment per clip (mean over portraits)\n",
        _table(
            _by_group(report["cross"]["per_clip"]),
            ["clip", "method"],
            _pick(CROSS_COLUMNS, (*CROSS_MAIN, "face_rate")),
        ),
        "## Cross-reenactment per portrait (mean over clips)\n",
        _table(
            _by_group(report["cross"]["per_source"]),
            ["portrait", "method"],
            _pick(CROSS_COLUMNS, (*CROSS_MAIN, "face_rate")),
        ),
    ]
    if config["skipped"]:
        parts += ["## Skipped\n", "".join(f"- {s}\n" for s in config["skipped"])]
    if timing.get("generate_ms_median"):
        parts += [
            "## Generator time (median ms per frame, this run's CPU)\n",
            "".join(f"- {k}: {v}\n" for k, v in timing["generate_ms_median"].items()),
        ]
    return "\n".join(parts)


def _failures(failed: Sequence[str]) -> str:
    if not failed:
        return ""
    lines = "".join(f"- {f}\n" for f in failed)
    return (
        f"**{len(failed)} unit(s) FAILED** (the pipeline raised; left out for every method):\n\n"
        + lines
    )


def bar_charts(report: dict, out: Path) -> list[Path]:
    """metrics_self.png and metrics_cross.png: one panel per main metric, one bar per method."""
    written = []
    for task, keys, columns in (
        ("self", SELF_MAIN, SELF_COLUMNS),
        ("cross", CROSS_MAIN, CROSS_COLUMNS),
    ):
        summary = report[task]["summary"]
        if not summary or not any(summary.values()):
            continue
        path = out / f"metrics_{task}.png"
        _bars(summary, _pick(columns, keys), f"{task}-reenactment", path)
        written.append(path)
    return written


def _bars(
    summary: dict[str, dict[str, float]], columns: list[Column], title: str, path: Path
) -> None:
    from matplotlib.figure import Figure  # lazy: only report writing needs matplotlib

    methods = list(summary)
    colours = [f"C{i}" for i in range(len(methods))]
    fig = Figure(figsize=(3.0 * len(columns), 3.4), layout="constrained")
    for ax, column in zip(fig.subplots(1, len(columns), squeeze=False)[0], columns, strict=True):
        values = [summary[m].get(column.key, np.nan) * column.scale for m in methods]
        ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        bars = ax.bar(range(len(methods)), values, color=colours)
        ax.bar_label(bars, labels=[column.fmt.format(v) for v in values], fontsize=7)
        finite = [v for v in values if np.isfinite(v)]
        if column.zoom and finite:
            # CSIM, SSIM, PSNR: all values near the top; from zero every bar would look equal.
            low, high = min(finite), max(finite)
            ax.set_ylim(low - 0.5 * (high - low) - 1e-3, high + 0.1 * (high - low) + 1e-3)
            ax.set_title(f"{column.header()} (zoomed)", fontsize=10)
            continue
        ax.set_title(column.header(), fontsize=10)
    fig.suptitle(title)
    fig.savefig(path, dpi=100)


def contact_sheet(
    columns: Sequence[str], rows: Sequence[tuple[str, Sequence[np.ndarray]]], path: Path
) -> None:
    """A grid of equal square tiles (RGB uint8) with column titles and row labels (one or more
    lines each), as PNG."""
    tile = rows[0][1][0].shape[0]
    label_w, title_h = 150, 28
    sheet = np.full((title_h + tile * len(rows), label_w + tile * len(columns), 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for j, name in enumerate(columns):
        cv2.putText(
            sheet, name, (label_w + j * tile + 4, 19), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA
        )
    for i, (label, images) in enumerate(rows):
        y = title_h + i * tile
        for k, line in enumerate(label.splitlines()):
            at = (4, y + tile // 2 + 18 * k)
            cv2.putText(sheet, line, at, font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        for j, image in enumerate(images):
            sheet[y : y + tile, label_w + j * tile : label_w + (j + 1) * tile] = image
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
