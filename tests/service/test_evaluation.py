"""The evaluation end to end on a 2-clip subset of ../shared/data, with the real pipeline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import pytest

from models.errors import BadInputError
from service import evaluation

CLIPS = ["lp_d0", "lp_d18"]  # short clips: a smile; a wide mouth opening
SOURCE = "fomm_11"
FRAMES = 4
METHODS = ["static", "absolute", "generator-256", "generator-512"]


def test_sample_indices_are_even_and_keep_the_ends() -> None:
    assert evaluation.sample_indices(78, 4) == [0, 26, 51, 77]
    assert evaluation.sample_indices(3, 10) == [0, 1, 2]
    assert evaluation.sample_indices(0, 5) == []


def test_mean_scores_skips_missing_and_non_finite() -> None:
    rows = [{"a": 1.0, "b": math.inf}, {"a": 3.0}, {"b": 2.0, "c": math.nan}]
    assert evaluation.mean_scores(rows) == {"a": 2.0, "b": 2.0}


def test_unknown_clip_is_refused(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="nope"):
        evaluation.run(data_dir, tmp_path, clips=["nope"])


@pytest.fixture(scope="module")
def report(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("eval")
    result = evaluation.run(data_dir, out, max_frames=FRAMES, clips=CLIPS, sources=[SOURCE])
    return result, out


def test_the_pipeline_ran_on_every_pair(report: tuple[dict, Path]) -> None:
    assert report[0]["config"]["failed"] == []
    assert report[0]["config"]["skipped"] == []


def test_report_files_are_written(report: tuple[dict, Path]) -> None:
    result, out = report
    assert json.loads((out / "report.json").read_text())["config"] == result["config"]
    md = (out / "report.md").read_text()
    for name in ("Self-reenactment", "Cross-reenactment", *METHODS, *CLIPS):
        assert name in md
    for png in ("metrics_self.png", "metrics_cross.png", "contact_self.png", "contact_cross.png"):
        image = cv2.imread(str(out / png))
        assert image is not None and image.shape[0] > 100, png
    # Cross contact sheet: title row + one tile row per shown frame; source, driver, 3 outputs.
    sheet = cv2.imread(str(out / "contact_cross.png"))
    assert sheet is not None and sheet.shape[1] == 150 + 5 * evaluation.THUMB


def test_every_method_is_scored(report: tuple[dict, Path]) -> None:
    result, _ = report
    assert list(result["self"]["summary"]) == METHODS
    assert list(result["cross"]["summary"]) == METHODS
    assert set(result["self"]["per_clip"]) == set(CLIPS)
    assert set(result["cross"]["pairs"]) == {f"{SOURCE}|{c}" for c in CLIPS}
    for method in METHODS:
        s, c = result["self"]["summary"][method], result["cross"]["summary"][method]
        for key in ("l1", "psnr", "ssim", "akd", "aed"):
            assert math.isfinite(s[key]), (method, key)
        for key in ("csim", "id_dist", "pose_err", "expr_err", "gaze_err", "leakage"):
            assert math.isfinite(c[key]), (method, key)
        assert s["tracked"] == c["tracked"] == 1.0
        assert c["face_rate"] == 1.0


def test_baselines_behave_as_baselines(report: tuple[dict, Path]) -> None:
    self_, cross = report[0]["self"]["summary"], report[0]["cross"]["summary"]
    # The static crop is the source itself: perfect identity, no leakage, but it misses motion
    # and does not match later frames exactly.
    assert cross["static"]["leakage"] == pytest.approx(0.0, abs=1e-6)
    assert cross["static"]["csim"] > 0.98
    assert self_["static"]["l1"] > 0.0
    # Absolute mode copies the driver's face shape: more leakage than the landmark transformer.
    assert cross["absolute"]["leakage"] > cross["generator-256"]["leakage"]
    # The generator keeps the source person (dlib: same person < 0.6).
    assert cross["generator-256"]["id_dist"] < 0.6
    assert self_["generator-256"]["aed"] < 0.6


def test_same_numbers_twice_and_pairs_independent(
    report: tuple[dict, Path], data_dir: Path, tmp_path: Path
) -> None:
    # A second run on one of the two clips must reproduce that clip's numbers exactly: nothing
    # random, and no state carried from one pair to the next.
    again = evaluation.run(data_dir, tmp_path, max_frames=FRAMES, clips=CLIPS[1:], sources=[SOURCE])
    first = report[0]
    assert again["self"]["per_clip"][CLIPS[1]] == first["self"]["per_clip"][CLIPS[1]]
    pair = f"{SOURCE}|{CLIPS[1]}"
    assert again["cross"]["pairs"][pair] == first["cross"]["pairs"][pair]
