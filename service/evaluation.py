"""Quality evaluation on real clips (``reenact eval``): the numbers every generator change is
judged by.

Two protocols from the reenactment literature (FOMM, Siarohin et al. 2019; LivePortrait, Guo et
al. 2024), run on a folder laid out like ../shared/data (``driving/*.mp4``, ``source/*.jpg``):

* **self-reenactment**: a clip's frame 0 is the source and the clip drives it, so every driving
  frame, cut with the source's crop box, is the ground truth: L1, PSNR, SSIM, AKD, AED;
* **cross-reenactment**: every portrait driven by every clip; no ground truth, so identity is
  scored against the portrait (CSIM, identity distance), motion against the driver (head-pose
  and expression error) and identity leakage between the two (face-shape proportions).

Every method runs on the same sampled frames in the same run: the **static** baseline (the
source crop repeated: perfect identity, no motion), **absolute** (the generator driven by the
driver's own landmarks, no identity transfer: the leakage ablation), and the generator with
the landmark transformer at 256² and 512².  All metrics are computed at the evaluation size;
512² outputs are downscaled to it.

Motion is scored as *change since the clip's first frame* (output vs driver), because the
landmark transformer transfers changes: the source keeps its own resting pose and expression,
so comparing absolute AUs or angles would charge it for the portrait's own smile.  Absolute
errors (``*_abs``) are reported too, for comparison with papers that use them.

Measurements (landmarks, pose, AUs, face shape) are taken on every image by one still-image
face mesh, so no tracking state or smoothing leaks between frames or methods; dlib embeddings
(≈0.15 s each) are taken on a few frames per pair.  Frames are sampled evenly over each clip
with fixed counts and nothing is random, so two runs give the same numbers (only ``timing``
differs).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar, cast

import av
import cv2
import numpy as np
from tqdm import tqdm

from engines import Engine, create_engine
from models import metrics
from models.action_units import expression_units
from models.crop import cut, face_box
from models.errors import BadInputError, NoFaceError
from models.identity import FaceIdentity
from models.landmarks import WARP_KEYPOINTS, Landmarks
from models.motion import Mode
from models.pipeline import Reenactor
from models.pose import FaceState, HeadPose, face_state
from models.source import SourceEmbedding, build_source, generator_config
from models.tracking import FaceTracker
from service import report as report_io
from service.offline import read_photo
from service.system import cpu_quota, single_threaded_children

log = logging.getLogger(__name__)

GENERATOR_SIZES = (256, 512)
FRAMES_PER_CLIP = 8  # sampled per clip, frame 0 included (the source / motion reference)
# Frames per (clip or pair, method) embedded by dlib (~0.15 s each): CSIM over 132 cross pairs
# needs fewer per pair than AED over 11 clips.
SELF_IDENTITY_FRAMES = 3
CROSS_IDENTITY_FRAMES = 1
CONTACT_PAIRS = 4  # pairs shown on each contact sheet
CONTACT_FRAMES = 3  # frames shown per pair
THUMB = 160  # contact-sheet tile side, pixels
_KEYPOINTS = list(WARP_KEYPOINTS)
_ZERO = np.zeros(3)
T = TypeVar("T")
_MESSAGE_LENGTH = 240  # of a failure in the report: enough to locate it, not a whole traceback


# --- inputs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One row of the tables: how an output frame is made."""

    name: str
    mode: Mode | None  # None: the static baseline, the source crop repeated
    size: int  # generator resolution


def methods(size: int) -> tuple[Method, ...]:
    """The baselines and the generator, in table order."""
    return (
        Method("static", None, size),
        Method("absolute", "absolute", size),
        *(Method(f"generator-{s}", "relative", s) for s in GENERATOR_SIZES),
    )


@dataclass(frozen=True)
class Clip:
    """A driving clip's sampled frames; frame 0 of the file is always the first."""

    name: str
    frames: list[np.ndarray]  # (H, W, 3) uint8 RGB
    times: list[float]  # seconds since the clip's start
    indices: list[int]  # frame numbers in the file


def sample_indices(total: int, count: int) -> list[int]:
    """``count`` frame numbers spread evenly over ``total`` frames, 0 and the last included."""
    if total <= 0:
        return []
    return sorted({round(x) for x in np.linspace(0, total - 1, min(count, total))})


def _frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for _ in container.decode(stream))


def read_clip(path: Path, count: int) -> Clip:
    """Decode only the sampled frames of a clip (H.264 must still be decoded in order)."""
    wanted = set(sample_indices(_frame_count(path), count))
    frames, times, indices = [], [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 25)
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(float(frame.time) if frame.time is not None else i / rate)
                indices.append(i)
            if i >= max(wanted, default=-1):
                break
    if len(frames) < 2:
        raise BadInputError(f"{path} has fewer than 2 decodable frames")
    return Clip(path.stem, frames, times, indices)


def _select(folder: Path, pattern: str, names: Sequence[str] | None) -> list[Path]:
    """Files in ``folder`` (sorted), optionally only the named ones (stem or file name)."""
    found = sorted(folder.glob(pattern))
    if names is None:
        return found
    by_name = {p.stem: p for p in found} | {p.name: p for p in found}
    missing = [n for n in names if n not in by_name]
    if missing:
        known = ", ".join(p.stem for p in found)
        raise BadInputError(f"not in {folder}: {', '.join(missing)} (have: {known})")
    return list(dict.fromkeys(by_name[n] for n in names))


# --- measuring faces ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Face:
    """What the metrics need from one face in one image."""

    landmarks: Landmarks
    state: FaceState
    expression: np.ndarray  # (8,) expression action units


class Analyzer:
    """The evaluation's own measuring instruments, shared by every method.

    A still-image face mesh (no tracking, no smoothing: each image is measured alone) and dlib's
    face-recognition network.  Results are remembered per image *object* for a while, because
    the static baseline shows the same crop in every frame of every clip; the memo holds a
    reference to each image, so an id is never reused while it is remembered.
    """

    def __init__(self, memo_size: int = 256) -> None:
        self._mesh = FaceTracker(video=False, smooth=False)
        self._identity = FaceIdentity()
        self._memo: OrderedDict[tuple[str, int], tuple[np.ndarray, object]] = OrderedDict()
        self._memo_size = memo_size

    def _remember(self, kind: str, image: np.ndarray, compute: Callable[[], T]) -> T:
        key = (kind, id(image))
        if key in self._memo:
            self._memo.move_to_end(key)
            return cast(T, self._memo[key][1])
        value = compute()
        self._memo[key] = (image, value)
        if len(self._memo) > self._memo_size:
            self._memo.popitem(last=False)
        return value

    def face(self, rgb: np.ndarray) -> Face | None:
        return self._remember("face", rgb, lambda: self._face(rgb))

    def _face(self, rgb: np.ndarray) -> Face | None:
        found = self._mesh(rgb)
        if found is None:
            return None
        state = face_state(found.points)
        return Face(found, state, expression_units(state.shape))

    def embed(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """dlib embedding of ``face`` (found in ``rgb`` by :meth:`face`)."""
        return self._remember(
            "embed", rgb, lambda: self._identity.embed_landmarks(rgb, face.landmarks)
        )

    def close(self) -> None:
        self._mesh.close()


def _relative_angles(face: Face, reference: Face) -> np.ndarray:
    """(yaw, pitch, roll) of the head's rotation since the reference frame, degrees."""
    rotation = face.state.pose.rotation @ reference.state.pose.rotation.T
    return np.array(HeadPose(rotation, 1.0, _ZERO).angles())


# --- running the methods ------------------------------------------------------------------------


class PipelineFailure(RuntimeError):
    """The pipeline raised on one frame of one pair (the message says which)."""


@dataclass
class Outputs:
    """One method's frames for one clip, at the evaluation size."""

    images: list[np.ndarray]
    tracked: float  # fraction of frames where the pipeline found the driver's face
    generate_ms: list[float] = field(default_factory=list)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size:
        return image
    interpolation = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interpolation)


def animate(
    method: Method,
    sources: dict[int, SourceEmbedding],
    engines: dict[int, Engine],
    clip: Clip,
    size: int,
) -> Outputs:
    """One method over a clip's sampled frames, at ``size``: the real pipeline, a fresh
    Reenactor (its own video tracker and driver reference), frames fed with their timestamps."""
    if method.mode is None:
        return Outputs([sources[size].crop] * len(clip.frames), 1.0)
    reenactor = Reenactor(sources[method.size], engines[method.size], mode=method.mode)
    images, found, spent = [], 0, []
    try:
        for frame, t, index in zip(clip.frames, clip.times, clip.indices, strict=True):
            try:
                result = reenactor(frame, t)
            except Exception as e:  # say where, for whoever debugs the pipeline
                raise PipelineFailure(f"{method.name}, frame {index}: {e}") from e
            images.append(_resize(result.image, size))
            found += result.face_found
            spent.append(result.timings_ms.get("generate", 0.0))
    finally:
        reenactor.close()
    return Outputs(images, found / len(clip.frames), spent)


def _identity_positions(count: int, wanted: int) -> set[int]:
    """Which of frames 1 .. count-1 get a dlib embedding: ``wanted`` of them, evenly spread
    and away from the ends (the middle one when only one is wanted)."""
    scored = count - 1
    return {1 + int((k + 0.5) * scored / wanted) for k in range(min(wanted, scored))}


# --- per-frame scores ---------------------------------------------------------------------------

Scores = dict[str, float]


def score_self(
    analyzer: Analyzer, outputs: Outputs, truth: list[np.ndarray], truth_faces: list[Face | None]
) -> list[Scores]:
    """Self-reenactment scores of frames 1.. (frame 0 is the source itself)."""
    embed_at = _identity_positions(len(truth), SELF_IDENTITY_FRAMES)
    rows = []
    for i in range(1, len(truth)):
        out, gt, gt_face = outputs.images[i], truth[i], truth_faces[i]
        face = analyzer.face(out)
        row: Scores = {
            "l1": metrics.l1(out, gt),
            "psnr": metrics.psnr(out, gt),
            "ssim": metrics.ssim(out, gt),
            "face_rate": float(face is not None),
        }
        if face is not None and gt_face is not None:
            row["akd"] = metrics.akd(
                face.landmarks.points[_KEYPOINTS],
                gt_face.landmarks.points[_KEYPOINTS],
                gt_face.landmarks.interocular(),
            )
            if i in embed_at:
                gt_embedding = analyzer.embed(gt, gt_face)
                row["aed"] = metrics.identity_distance(analyzer.embed(out, face), gt_embedding)
        rows.append(row)
    return rows


@dataclass(frozen=True)
class SourceFaces:
    """The portrait as measured: its embedding and its face in the evaluation crop."""

    embedding: np.ndarray
    crop: Face


def score_cross(
    analyzer: Analyzer, outputs: Outputs, drivers: list[Face | None], source: SourceFaces
) -> list[Scores]:
    """Cross-reenactment scores of frames 1.. against the driver (motion) and source (identity)."""
    faces = [analyzer.face(img) for img in outputs.images]
    out_ref, drv_ref = faces[0], drivers[0]
    embed_at = _identity_positions(len(faces), CROSS_IDENTITY_FRAMES)
    rows = []
    for i in range(1, len(faces)):
        face, driver = faces[i], drivers[i]
        row: Scores = {"face_rate": float(face is not None)}
        if face is not None and i in embed_at:
            embedding = analyzer.embed(outputs.images[i], face)
            row["csim"] = metrics.cosine_similarity(source.embedding, embedding)
            row["id_dist"] = metrics.identity_distance(source.embedding, embedding)
        if face is not None and driver is not None:
            row.update(_motion_scores(face, driver, out_ref, drv_ref))
        if face is not None and drv_ref is not None:
            # Toward the driver's identity: its reference frame, as the transformer sees it.
            row["leakage"] = metrics.identity_leakage(
                face.state.shape, source.crop.state.shape, drv_ref.state.shape
            )
        rows.append(row)
    return rows


def _motion_scores(face: Face, driver: Face, out_ref: Face | None, drv_ref: Face | None) -> Scores:
    """Head-pose, expression and gaze errors of the output against the driver."""
    pose_abs = metrics.angle_difference(face.state.pose.angles(), driver.state.pose.angles())
    row: Scores = {
        "pose_err_abs": float(pose_abs.mean()),
        "expr_err_abs": metrics.expression_error(face.expression, driver.expression),
    }
    if out_ref is not None and drv_ref is not None:
        pose = metrics.angle_difference(
            _relative_angles(face, out_ref), _relative_angles(driver, drv_ref)
        )
        row.update(yaw_err=pose[0], pitch_err=pose[1], roll_err=pose[2], pose_err=pose.mean())
        row["expr_err"] = metrics.expression_error(
            face.expression - out_ref.expression, driver.expression - drv_ref.expression
        )
        row["gaze_err"] = metrics.gaze_error(
            metrics.gaze(face.landmarks.points) - metrics.gaze(out_ref.landmarks.points),
            metrics.gaze(driver.landmarks.points) - metrics.gaze(drv_ref.landmarks.points),
        )
    return {k: float(v) for k, v in row.items()}


# --- aggregation --------------------------------------------------------------------------------


def mean_scores(rows: Iterable[Scores]) -> Scores:
    """Per-key mean over the rows that have the key; non-finite values (PSNR's inf, a NaN
    leakage) are left out rather than allowed to poison the mean."""
    collected: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if np.isfinite(value):
                collected.setdefault(key, []).append(value)
    return {k: float(np.mean(v)) for k, v in sorted(collected.items())}


def _group(pairs: dict[str, dict[str, Scores]], key_of: int) -> dict[str, dict[str, Scores]]:
    """Mean of pair scores grouped by one part of the "source|clip" key (0 source, 1 clip)."""
    groups: dict[str, dict[str, list[Scores]]] = {}
    for pair, by_method in pairs.items():
        name = pair.split("|")[key_of]
        for method, scores in by_method.items():
            groups.setdefault(name, {}).setdefault(method, []).append(scores)
    return {
        name: {m: mean_scores(rows) for m, rows in by_method.items()}
        for name, by_method in groups.items()
    }


def _summary(per_unit: dict[str, dict[str, Scores]], names: Sequence[str]) -> dict[str, Scores]:
    """Each method's mean over units (clips or pairs): every unit weighs the same."""
    return {m: mean_scores(unit[m] for unit in per_unit.values() if m in unit) for m in names}


def _rounded(value: object) -> object:
    """Floats to 5 significant digits so that report.json diffs show real changes only."""
    if isinstance(value, float):
        return float(f"{value:.5g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


# --- the two protocols --------------------------------------------------------------------------

SheetRow = tuple[str, list[np.ndarray]]  # a label and its thumbnails


def _sheet_rows(
    title: str, clip: Clip, first: list[list[np.ndarray]], shown: list[list[np.ndarray]]
) -> list[SheetRow]:
    """A few frames of one pair: per frame, the images of ``first`` then those of ``shown``."""
    positions = [p + 1 for p in sample_indices(len(clip.frames) - 1, CONTACT_FRAMES)]
    return [
        (
            f"{title}\n{clip.name}\nframe {clip.indices[i]}",
            [_resize(img, THUMB) for img in [*first[i], *(s[i] for s in shown)]],
        )
        for i in positions
    ]


def build_sources(photo: np.ndarray, size: int) -> dict[int, SourceEmbedding]:
    """The source embedding at the evaluation size and at every generator size."""
    return {s: build_source(photo, s) for s in sorted({size, *GENERATOR_SIZES})}


@dataclass
class PairResult:
    """What one unit of work (a clip's self-reenactment, or one portrait x clip) produced."""

    key: str
    scores: dict[str, Scores] | None  # method -> mean scores; None when skipped or failed
    skipped: str = ""  # an input without a face: expected, listed in the report
    failed: str = ""  # the pipeline raised: a bug, listed at the top of the report
    sheet: list[SheetRow] = field(default_factory=list)
    generate_ms: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class Evaluator:
    """Runs units of work: owns the engines, the instruments and per-process caches.

    One per process.  Every unit is computed from the inputs alone (fresh Reenactors, still-image
    measurements), so a unit's numbers do not depend on which process ran it or what ran before.
    """

    size: int
    frames: int
    clip_paths: dict[str, Path]
    photo_paths: dict[str, Path]
    threads: int | None = None
    methods: tuple[Method, ...] = ()
    _engines: dict[int, Engine] = field(default_factory=dict)
    _analyzer: Analyzer | None = None
    _clips: dict[str, Clip] = field(default_factory=dict)
    _drivers: dict[str, list[Face | None]] = field(default_factory=dict)
    _sources: dict[str, tuple[dict[int, SourceEmbedding], SourceFaces]] = field(
        default_factory=dict
    )

    def __post_init__(self) -> None:
        self.methods = methods(self.size)
        for s in GENERATOR_SIZES:
            self._engines[s] = create_engine("onnxruntime", s, threads=self.threads)
        self._analyzer = Analyzer()

    @property
    def analyzer(self) -> Analyzer:
        assert self._analyzer is not None
        return self._analyzer

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self.analyzer.close()

    def clip(self, name: str) -> Clip:
        if name not in self._clips:
            self._clips[name] = read_clip(self.clip_paths[name], self.frames)
        return self._clips[name]

    def drivers(self, name: str) -> list[Face | None]:
        """The driver's face in every sampled frame, measured like the outputs."""
        if name not in self._drivers:
            self._drivers[name] = [self.analyzer.face(f) for f in self.clip(name).frames]
        return self._drivers[name]

    def source(self, name: str) -> tuple[dict[int, SourceEmbedding], SourceFaces]:
        """A portrait's source embeddings and its measured face; NoFaceError without a face."""
        if name not in self._sources:
            photo = read_photo(self.photo_paths[name])
            built = build_sources(photo, self.size)
            face, crop_face = self.analyzer.face(photo), self.analyzer.face(built[self.size].crop)
            if face is None or crop_face is None:
                raise NoFaceError("the evaluation's face mesh finds no face in the portrait")
            self._sources[name] = built, SourceFaces(self.analyzer.embed(photo, face), crop_face)
        return self._sources[name]

    def _run_all(
        self, sources: dict[int, SourceEmbedding], clip: Clip, result: PairResult
    ) -> dict[str, Outputs]:
        outputs = {}
        for method in self.methods:
            outputs[method.name] = animate(method, sources, self._engines, clip, self.size)
            result.generate_ms[method.name] = outputs[method.name].generate_ms
        return outputs

    def self_reenactment(self, clip_name: str, sheet: bool) -> PairResult:
        """Frame 0 animated by its own clip; the clip, cut like the source, is the ground truth."""
        result = PairResult(f"self|{clip_name}", None)
        clip = self.clip(clip_name)
        try:
            sources = build_sources(clip.frames[0], self.size)
        except NoFaceError:
            result.skipped = f"self {clip_name}: no face in frame 0"
            return result
        truth = [cut(frame, sources[self.size].box, self.size) for frame in clip.frames]
        truth_faces = [None, *(self.analyzer.face(gt) for gt in truth[1:])]
        outputs = self._run_all(sources, clip, result)
        result.scores = {
            name: {
                **mean_scores(score_self(self.analyzer, out, truth, truth_faces)),
                "tracked": out.tracked,
            }
            for name, out in outputs.items()
        }
        if sheet:
            shown = [outputs[m.name].images for m in self.methods[1:]]
            result.sheet = _sheet_rows("self", clip, [[truth[0], gt] for gt in truth], shown)
        return result

    def cross_reenactment(self, source_name: str, clip_name: str, sheet: bool) -> PairResult:
        """One portrait animated by one clip: identity vs the portrait, motion vs the driver."""
        result = PairResult(f"{source_name}|{clip_name}", None)
        try:
            sources, measured = self.source(source_name)
        except NoFaceError:
            result.skipped = f"cross {source_name}: no face in the portrait"
            return result
        clip, drivers = self.clip(clip_name), self.drivers(clip_name)
        outputs = self._run_all(sources, clip, result)
        result.scores = {
            name: {
                **mean_scores(score_cross(self.analyzer, out, drivers, measured)),
                "tracked": out.tracked,
            }
            for name, out in outputs.items()
        }
        if sheet:
            crops = _driver_crops(clip, drivers, self.size)
            first = [[sources[self.size].crop, c] for c in crops]
            shown = [outputs[m.name].images for m in self.methods[1:]]
            result.sheet = _sheet_rows(source_name, clip, first, shown)
        return result

    def __call__(self, job: Job) -> PairResult:
        """One unit's result.  Should the pipeline raise, the unit is reported as failed, for
        every method (so the methods are still compared on the same pairs), and the run goes
        on: one bad pair must not throw away the other 140."""
        try:
            if job.source is None:
                return self.self_reenactment(job.clip, job.sheet)
            return self.cross_reenactment(job.source, job.clip, job.sheet)
        except Exception as e:  # any library's error: recorded, never swallowed silently
            key = f"{job.source or 'self'}|{job.clip}"
            log.exception("evaluation of %s failed", key)
            first_line = f"{key}: {type(e).__name__}: {e}".splitlines()[0]
            return PairResult(key, None, failed=first_line[:_MESSAGE_LENGTH])


def _driver_crops(clip: Clip, faces: list[Face | None], size: int) -> list[np.ndarray]:
    """The driving frames cut around the driver's face, for the contact sheet."""
    crops = []
    for frame, face in zip(clip.frames, faces, strict=True):
        if face is None:
            h, w = frame.shape[:2]
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            crops.append(_resize(frame[top : top + side, left : left + side], size))
        else:
            crops.append(cut(frame, face_box(face.landmarks), size))
    return crops


# --- scheduling: one Evaluator per worker process ------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One unit of work: a clip's self-reenactment (source None) or a portrait x clip pair."""

    clip: str
    source: str | None
    sheet: bool  # whether its frames go on a contact sheet


def jobs(clips: Sequence[str], sources: Sequence[str]) -> list[Job]:
    """Every unit in a fixed order; the contact sheets show the first clips and a diagonal of
    (portrait, clip) pairs, so different people and different clips."""
    units = [Job(c, None, i < CONTACT_PAIRS) for i, c in enumerate(clips)]
    shown = min(CONTACT_PAIRS, max(len(sources), len(clips)))
    diagonal = (
        {(sources[i % len(sources)], clips[i % len(clips)]) for i in range(shown)}
        if sources
        else set()
    )
    units += [Job(c, s, (s, c) in diagonal) for s in sources for c in clips]
    return units


_WORKER: Evaluator | None = None


def _start_worker(args: tuple) -> None:
    global _WORKER
    _WORKER = Evaluator(*args)


def _work(job: Job) -> PairResult:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER(job)


def _execute(units: list[Job], args: tuple, workers: int) -> Iterator[PairResult]:
    """Results of ``units`` in their order, computed by ``workers`` processes.

    Always in worker processes, even one: the numbers must not depend on the machine's core
    count, and a worker's single-threaded onnxruntime and BLAS give the same floats everywhere.
    """
    context = multiprocessing.get_context("spawn")  # never fork a process holding ORT threads
    with single_threaded_children():
        pool = context.Pool(workers, initializer=_start_worker, initargs=(args,))
    with pool:
        yield from pool.imap(_work, units, chunksize=1)


# --- entry point --------------------------------------------------------------------------------


def run(
    data: Path,
    out: Path,
    size: int = 256,
    max_frames: int | None = None,
    clips: list[str] | None = None,
    sources: list[str] | None = None,
) -> dict:
    """Evaluate every method on ``data``; write report.json, report.md and PNGs into ``out``.

    ``max_frames`` is the number of frames sampled per clip (default ``FRAMES_PER_CLIP``, frame 0
    included); ``clips`` / ``sources`` restrict the set (file stems).  Work is spread over one
    process per available core.  Returns the report.
    """
    frames = FRAMES_PER_CLIP if max_frames is None else max_frames
    if frames < 2:
        raise BadInputError("max_frames must be at least 2: frame 0 is the reference")
    generator_config(size)  # refuse an unsupported size before any work
    started = time.perf_counter()
    data = Path(data)
    clip_paths = {p.stem: p for p in _select(data / "driving", "*.mp4", clips)}
    photo_paths = {p.stem: p for p in _select(data / "source", "*.jpg", sources)}
    if not clip_paths:
        raise BadInputError(f"no driving clips (*.mp4) in {data / 'driving'}")
    units = jobs(list(clip_paths), list(photo_paths))
    args = (size, frames, clip_paths, photo_paths, 1)  # one onnxruntime thread per worker
    workers = min(cpu_quota(), len(units))
    results: list[PairResult] = []
    with tqdm(total=len(units), desc="eval", unit="pair") as bar:
        for result in _execute(units, args, workers):
            results.append(result)
            bar.set_postfix_str(result.key, refresh=False)
            bar.update()
    report = _assemble(results, methods(size), data, size, frames, clip_paths)
    report["timing"] = _timing(results, time.perf_counter() - started, workers)
    self_sheet = [row for r in results if r.key.startswith("self|") for row in r.sheet]
    cross_sheet = [row for r in results if not r.key.startswith("self|") for row in r.sheet]
    _write(Path(out), report, self_sheet, cross_sheet)
    return report


def _assemble(
    results: list[PairResult],
    table: tuple[Method, ...],
    data: Path,
    size: int,
    frames: int,
    clip_paths: dict[str, Path],
) -> dict:
    names = [m.name for m in table]
    self_per_clip = {
        r.key.split("|")[1]: r.scores for r in results if r.key.startswith("self|") and r.scores
    }
    pairs = {r.key: r.scores for r in results if not r.key.startswith("self|") and r.scores}
    report = {
        "config": {
            "data": str(data),
            "size": size,
            "frames_per_clip": frames,
            "identity_frames": {"self": SELF_IDENTITY_FRAMES, "cross": CROSS_IDENTITY_FRAMES},
            "methods": {m.name: {"mode": m.mode or "static", "size": m.size} for m in table},
            "clips": {n: sample_indices(_frame_count(p), frames) for n, p in clip_paths.items()},
            "sources": sorted({k.split("|")[0] for k in pairs}),
            "skipped": sorted({r.skipped for r in results if r.skipped}),
            "failed": [r.failed for r in results if r.failed],
        },
        "self": {"summary": _summary(self_per_clip, names), "per_clip": self_per_clip},
        "cross": {
            "summary": _summary(pairs, names),
            "per_clip": _group(pairs, 1),
            "per_source": _group(pairs, 0),
            "pairs": pairs,
        },
    }
    return cast(dict, _rounded(report))


def _timing(results: list[PairResult], wall: float, workers: int) -> dict:
    """Not reproducible, hence kept apart from the numbers."""
    spent: dict[str, list[float]] = {}
    for result in results:
        for method, values in result.generate_ms.items():
            spent.setdefault(method, []).extend(values)
    return {
        "wall_s": round(wall, 1),
        "workers": workers,
        "generate_ms_median": {k: round(float(np.median(v)), 2) for k, v in spent.items() if v},
    }


def _write(
    out: Path, report: dict, self_sheet: list[SheetRow], cross_sheet: list[SheetRow]
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(report_io.markdown(report))
    report_io.bar_charts(report, out)
    method_names = list(report["config"]["methods"])[1:]
    for name, rows, first in (
        ("contact_self.png", self_sheet, ["source", "ground truth"]),
        ("contact_cross.png", cross_sheet, ["source", "driver"]),
    ):
        if rows:
            report_io.contact_sheet([*first, *method_names], rows, out / name)
    log.info("evaluation report written to %s", out)
