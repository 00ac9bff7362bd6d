"""The ``reenact`` command.  Arguments are parsed here, at the edge, and nowhere else.

Sub-commands import their machinery lazily so ``reenact --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

# One BLAS thread: the per-frame spline solve is a small system, and a multi-threaded BLAS
# fighting onnxruntime for the same cores turned its 3 ms into 100 ms.  Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from models.errors import BadInputError, ReenactError

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"  # the evaluation set beside a checkout
EXIT_BAD_INPUT = 2


def _default_photo() -> Path:
    from service.builtin import AvatarCatalog

    return next(iter(AvatarCatalog())).path


def _animate(args: argparse.Namespace) -> None:
    from service.offline import AnimateOptions, animate

    options = AnimateOptions(
        size=args.size,
        mode=args.mode,
        side_by_side=args.side_by_side,
        full_photo=args.full_photo,
        backend=args.backend,
        progress=not args.quiet,
    )
    report = animate(args.source, args.driving, args.out, options)
    print(
        f"wrote {args.out}: {report.frames} frames at {report.fps:.2f} fps"
        f"{', audio kept' if report.audio else ''}"
        f"{f', face lost in {report.frames_without_face}' if report.frames_without_face else ''}"
    )


def _bench(args: argparse.Namespace) -> None:
    from service.benchmarks import pipeline

    pipeline.run(
        args.source or _default_photo(),
        args.driving,
        args.size,
        args.backend,
        frames=args.frames,
        threads=args.threads,
        out=args.out,
    )


def _export(args: argparse.Namespace) -> None:
    from engines.export import export_face_mesh, export_generator
    from models.source import generator_config

    for size in args.size:
        print(export_generator(generator_config(size)))
    print(export_face_mesh())  # the landmark network for the engine-backed tracker


def _serve(args: argparse.Namespace) -> None:
    from service.app import run

    run(host=args.host, port=args.port)


def _eval(args: argparse.Namespace) -> None:
    from service.evaluation import run

    run(
        args.data,
        args.out,
        size=args.size,
        max_frames=args.max_frames,
        clips=args.clips,
        sources=args.sources,
    )


def _bench_rtc(args: argparse.Namespace) -> None:
    from service.benchmarks import loopback

    loopback.run(args.clients, args.seconds, args.size, args.out)


def _soak(args: argparse.Namespace) -> None:
    from service.benchmarks import soak

    if args.churn:
        soak.churn(args.churn, args.churn_seconds, args.size, args.out, driving=args.driving)
        return
    soak.run(
        args.clients,
        args.seconds,
        args.size,
        args.out,
        find_max=args.find_max,
        probe_seconds=args.probe_seconds,
        max_clients=args.max_clients,
        driving=args.driving,
    )


def _encode(args: argparse.Namespace) -> None:
    from service import compression

    print(json.dumps(compression.encode_file(args.clip, args.out, keyframe=args.keyframe)))


def _decode(args: argparse.Namespace) -> None:
    from service import compression

    print(
        json.dumps(compression.decode_file(args.stream, args.out, size=args.size, loss=args.loss))
    )


def _peer(args: argparse.Namespace) -> None:
    from service import peer

    peer.run(args)


def _bench_rd(args: argparse.Namespace) -> None:
    from service.benchmarks import rate_distortion

    rate_distortion.run(args.data, args.out, clips=args.clips, max_frames=args.max_frames)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reenact", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("animate", help="animate a portrait with a driving video")
    a.add_argument("--source", type=Path, required=True, help="portrait photo (JPEG/PNG/WebP)")
    a.add_argument("--driving", type=Path, required=True, help="driving video")
    a.add_argument("--out", type=Path, required=True, help="output .mp4")
    a.add_argument("--size", type=int, choices=(256, 512), default=256)
    a.add_argument("--mode", choices=("relative", "absolute"), default="relative")
    a.add_argument("--side-by-side", action="store_true", help="driver | avatar")
    a.add_argument("--full-photo", action="store_true", help="paste back into the whole photo")
    a.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.set_defaults(func=_animate)

    b = sub.add_parser("bench", help="per-stage pipeline timing on this CPU")
    b.add_argument("--source", type=Path, help="portrait (default: the built-in avatar)")
    b.add_argument("--driving", type=Path, default=DEFAULT_DATA / "driving" / "lp_d10.mp4")
    b.add_argument("--size", type=int, nargs="+", choices=(256, 512), default=[256, 512])
    b.add_argument("--backend", nargs="+", default=["onnxruntime", "torch"])
    b.add_argument("--frames", type=int, default=200)
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    b.set_defaults(func=_bench)

    e = sub.add_parser("export", help="export the generator to ONNX into the engine cache")
    e.add_argument("--size", type=int, action="append", choices=(256, 512))
    e.set_defaults(func=_export)

    s = sub.add_parser("serve", help="run the real-time service")
    s.add_argument("--host", default=None)
    s.add_argument("--port", type=int, default=None)
    s.set_defaults(func=_serve)

    v = sub.add_parser("eval", help="quality evaluation on a folder of clips and portraits")
    v.add_argument("--data", type=Path, default=DEFAULT_DATA)
    v.add_argument("--out", type=Path, required=True)
    v.add_argument("--size", type=int, choices=(256, 512), default=256)
    v.add_argument("--max-frames", type=int, default=None)
    v.add_argument("--clips", nargs="+", default=None)
    v.add_argument("--sources", nargs="+", default=None)
    v.set_defaults(func=_eval)

    r = sub.add_parser("bench-rtc", help="N loopback WebRTC clients against the server")
    r.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    r.add_argument("--seconds", type=float, default=10.0)
    r.add_argument("--size", type=int, choices=(256, 512), default=256)
    r.add_argument("--out", type=Path, default=Path("reports/bench-rtc"))
    r.set_defaults(func=_bench_rtc)

    o = sub.add_parser("soak", help="N loopback clients for minutes: fps, latency, RSS/fds/threads")
    o.add_argument("--clients", type=int, nargs="+", default=[4], help="one run per value")
    o.add_argument("--seconds", type=float, default=300.0, help="length of each run")
    o.add_argument("--size", type=int, choices=(256, 512), default=256)
    o.add_argument("--out", type=Path, default=Path("reports/soak"))
    o.add_argument(
        "--find-max",
        action="store_true",
        help="first probe N = 1, 2, ... until a session gets < 15 fps, then soak the largest",
    )
    o.add_argument("--probe-seconds", type=float, default=60.0)
    o.add_argument("--max-clients", type=int, default=8, help="--find-max stops here")
    o.add_argument("--driving", type=Path, default=DEFAULT_DATA / "driving", help="clips folder")
    o.add_argument(
        "--churn",
        type=int,
        default=0,
        metavar="K",
        help="instead: K sessions one after another, server RSS/fds/threads after each ends",
    )
    o.add_argument("--churn-seconds", type=float, default=4.0, help="streaming per churn session")
    o.set_defaults(func=_soak)

    k = sub.add_parser("encode", help="compress a talking-head clip to a keypoint stream (.rkp)")
    k.add_argument("clip", type=Path)
    k.add_argument("--out", type=Path, required=True)
    k.add_argument("--keyframe", type=int, default=0, help="index of the frame sent as keyframe")
    k.set_defaults(func=_encode)

    d = sub.add_parser("decode", help="rebuild a video from a keypoint stream (.rkp)")
    d.add_argument("stream", type=Path)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--size", type=int, choices=(256, 512), default=256)
    d.add_argument("--loss", type=float, default=0.0, help="simulated packet loss, 0..1")
    d.set_defaults(func=_decode)

    q = sub.add_parser("peer", help="a keypoint-call peer over WebRTC (see docs/compression.md)")
    q.add_argument("role", choices=("offer", "answer"))
    q.add_argument("--video", type=Path, required=True, help="this peer's camera (a clip)")
    q.add_argument("--signal", default="127.0.0.1:9999", help="host:port of the TCP signalling")
    q.add_argument("--out", type=Path, default=None, help="write the rebuilt remote video here")
    q.add_argument("--seconds", type=float, default=10.0)
    q.set_defaults(func=_peer)

    m = sub.add_parser("bench-rd", help="rate-distortion: keypoint codec vs VP8 and H.264")
    m.add_argument("--data", type=Path, default=DEFAULT_DATA)
    m.add_argument("--out", type=Path, default=Path("reports/rate-distortion"))
    m.add_argument("--clips", nargs="+", default=None)
    m.add_argument("--max-frames", type=int, default=150)
    m.set_defaults(func=_bench_rd)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "export" and not args.size:
        args.size = [256]
    try:
        args.func(args)
    except BadInputError as e:
        print(f"reenact: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ReenactError as e:
        print(f"reenact: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
