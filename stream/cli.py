"""The ``avstream`` command line. The only place that prints and exits."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from stream.batch_cli import add_batch_subparser, run_batch_command
from stream.composite import FEATHER_PX
from stream.engines_cli import (
    add_backend_arguments,
    add_engines_subparser,
    open_model_inpainter,
    run_engines,
)
from stream.errors import AvstreamError, InputError, UsageError
from stream.fleet_cli import add_fleet_subparser, run_fleet_command
from stream.inpaint import Inpainter, OpenCVInpainter, OpenCVMethod
from stream.media import EncodeOptions
from stream.occlusion import FixedRegion, OcclusionModel
from stream.pipeline import ProcessOptions, ProcessReport, process_file
from stream.region import box_mask, load_mask_image, parse_box
from stream.restore import ReuseOptions
from stream.speaker import SpeechWindow, StagedSpeakerSink
from stream.track import TrackerOptions
from stream.types import Mask

if TYPE_CHECKING:
    from stream.live import LiveOptions, LiveOutputs

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse prints the whole usage block; one line is easier to read in scripts.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _add_region_options(parser: argparse.ArgumentParser) -> None:
    """The region to restore: by default the segmenter finds what covers each face
    (``--mask-detect`` says so explicitly); ``--mask-box`` / ``--mask-image`` ask for a
    fixed crop-space region on every face (the paper's protocol). Shared by process and
    live (``occlusion_model``)."""
    region = parser.add_mutually_exclusive_group()
    region.add_argument(
        "--mask-detect",
        action="store_true",
        help="find what covers each face with the shipped occlusion segmenter and restore "
        "only the covered pixels of covered faces; other faces pass through exactly as "
        "they are (the default; this flag only says so)",
    )
    region.add_argument(
        "--mask-box",
        metavar="X,Y,W,H",
        nargs="?",
        const="paper",
        help="instead of detection, restore this fixed region of every face, in aligned "
        "256x256 crop pixels; alone: the paper's box, rows 89-216, cols 64-191",
    )
    region.add_argument(
        "--mask-image",
        type=Path,
        metavar="PNG",
        help="instead of detection, restore this fixed 256x256 crop-space mask of every "
        "face; white marks pixels to restore",
    )
    parser.add_argument(
        "--mask-threshold",
        type=float,
        metavar="FRACTION",
        help="restore a face when at least this fraction of it is covered "
        "(default: 0.04; detection only)",
    )
    parser.add_argument(
        "--mask-dilate-px",
        type=int,
        metavar="N",
        help="grow each detected region by N crop pixels into the visible face (default: 0, "
        "exactly what covers the face; growth costs identity; detection only)",
    )
    parser.add_argument(
        "--mask-plain-edges",
        action="store_true",
        help="take the segmenter's map as it is (covered above 0.5) instead of moving the "
        "region's edges onto the edges the crop shows (the default finds more of the "
        "occluder's rim at the same precision; detection only)",
    )
    parser.add_argument(
        "--mask-hard-edges",
        action="store_true",
        help="restore only the detected region, none of the occluder's soft edge around it "
        "(by default the 2 crop pixels just outside the region are restored in part, as far "
        "as the segmenter finds them covered; detection only)",
    )
    parser.add_argument(
        "--no-past-crop",
        action="store_true",
        help="restore only inside each face's crop, even where the detected occluder runs "
        "past the crop's edge (a hand past the cheek, a mask below a turned head's crop); "
        "by default its part outside is followed by colour and filled (detection only)",
    )


def _add_provenance_options(parser: argparse.ArgumentParser, where: str) -> None:
    """``--no-sidecar`` and ``--mark-restored``: saying which pixels were made up."""
    parser.add_argument(
        "--no-sidecar",
        action="store_true",
        help=f"do not write the provenance sidecar (default: {where}, one JSON line per "
        "frame: each face's track id, box, coverage, backend and the exact restored pixels; "
        "read it with python -m stream.provenance)",
    )
    parser.add_argument(
        "--mark-restored",
        action="store_true",
        help="burn a visible outline around every restored region into the video",
    )


def _fixed_region_mask(args: argparse.Namespace) -> Mask:
    """The crop-space mask of ``--mask-image`` or ``--mask-box`` (bare: the paper's box)."""
    if args.mask_image:
        return load_mask_image(args.mask_image)
    return box_mask(parse_box(args.mask_box) if args.mask_box != "paper" else None)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = _Parser(
        prog="avstream",
        description="Restore covered faces in talking-head video, keeping each person's identity.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    proc = sub.add_parser(
        "process",
        help="restore faces in a video file",
        description=(
            "Restore the covered region of every face in a video file. Every frame and "
            "timestamp is kept and the audio packets are copied unchanged."
        ),
    )
    proc.add_argument("input", type=Path, help="input video file")
    proc.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output file (.mp4, .mkv, .mov, .m4v); never the input",
    )
    add_process_options(proc)
    proc.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_backend_arguments(proc)
    _add_live(sub)
    _add_serve(sub)
    _add_convert(sub)
    add_engines_subparser(sub, _Parser)
    add_batch_subparser(sub, _Parser, add_process_options)
    add_fleet_subparser(sub, _Parser)
    sub.add_parser(
        "train", help="prepare data, train and evaluate (see avstream train -h)", add_help=False
    )
    sub.add_parser(
        "eval",
        help="compare a model with the OpenCV baselines (see avstream eval -h)",
        add_help=False,
    )
    return parser


def add_process_options(proc: argparse.ArgumentParser) -> None:
    """Every ``process`` option but the input, ``-o`` and the backend's: shared by ``process``
    and ``batch``, which applies them to every file."""
    _add_region_options(proc)
    proc.add_argument(
        "--inpainter",
        choices=["auto", "model", "telea", "ns"],
        default="auto",
        help="model: the audio-driven network (--model, --backend), hearing the file's own "
        "speech; telea/ns: OpenCV baselines; auto: the model when its weights are installed, "
        "else telea (default: auto)",
    )
    proc.add_argument(
        "--inpaint-radius-px",
        type=float,
        default=5.0,
        help="OpenCV inpainting neighbourhood radius (default: 5)",
    )
    proc.add_argument(
        "--crf", type=int, default=18, help="H.264 quality, 0-51, lower is better (default: 18)"
    )
    proc.add_argument(
        "--preset", default="medium", help="libx264 preset, ultrafast..veryslow (default: medium)"
    )
    proc.add_argument(
        "--detect-every",
        type=int,
        default=5,
        help="run the face detector every N frames, track in between (default: 5)",
    )
    proc.add_argument(
        "--feather-px",
        type=float,
        default=FEATHER_PX,
        help="width of the blend ramp inside the restored region, crop pixels; pixels "
        f"outside the region never change (default: {FEATHER_PX:g}, a hard edge)",
    )
    proc.add_argument(
        "--threads", type=int, default=0, help="codec threads, 0 = automatic (default: 0)"
    )
    proc.add_argument(
        "--no-reuse",
        action="store_true",
        help="regenerate every face every frame (default: reuse a track's restored crop "
        "until the visible face changes, then cross-fade; steadier and faster)",
    )
    proc.add_argument(
        "--speaker-audio",
        metavar="PATH|none",
        help="the speech the model hears instead of the input's own: another file's audio "
        "on the input's timeline, or none (the neutral speaker throughout)",
    )
    _add_provenance_options(proc, "OUTPUT's name with .restored.jsonl, beside it")


def _add_convert(sub: argparse._SubParsersAction[_Parser]) -> None:
    conv = sub.add_parser(
        "convert",
        help="convert foreign model weights to avinpaint checkpoints",
        description="Convert foreign model weights to avinpaint checkpoints.",
    )
    formats = conv.add_subparsers(dest="format", required=True, parser_class=_Parser)
    audioface = formats.add_parser(
        "audioface",
        help="official AudioFace generator checkpoint (G_*.pth) -> 'paper' safetensors",
        description="Convert the official AudioFace G_*.pth to an avinpaint 'paper' checkpoint. "
        "It is read with torch.load(weights_only=True): tensors only, nothing unpickled.",
    )
    audioface.add_argument("checkpoint", type=Path, help="official generator, e.g. G_500000.pth")
    audioface.add_argument("-o", "--output", type=Path, required=True, help="output .safetensors")


def _run_convert(args: argparse.Namespace) -> int:
    from avinpaint.checkpoint import CheckpointError
    from avinpaint.convert import convert_audioface

    if args.output.resolve() == args.checkpoint.resolve():
        raise UsageError("output is the input checkpoint; choose another path")
    try:
        out = convert_audioface(args.checkpoint, args.output)
    except CheckpointError as exc:
        raise AvstreamError(str(exc)) from exc
    print(f"wrote {out} (preset 'paper')")
    return EXIT_OK


def _add_live(sub: argparse._SubParsersAction[_Parser]) -> None:
    live = sub.add_parser(
        "live",
        help="restore faces in a live stream and serve or record it",
        description=(
            "Restore faces in a live stream (an RTSP camera, or a file played at its native "
            "rate) and serve the result over RTSP and/or record it. Frames that would miss "
            "the latency budget are passed through unrestored; the source is re-opened with "
            "exponential backoff when it fails or stalls. Stop with Ctrl-C or SIGTERM: the "
            "recording is finalised. Watch with: ffplay -rtsp_transport tcp URL"
        ),
    )
    live.add_argument("source", help="rtsp://... camera URL, or a video file (for testing)")
    live.add_argument(
        "--serve", metavar="rtsp://HOST:PORT/PATH", help="serve the restored stream here"
    )
    live.add_argument(
        "--record", type=Path, metavar="OUT", help="also record to this file (.mp4, .mkv, ...)"
    )
    live.add_argument(
        "--max-latency-ms",
        type=float,
        default=250.0,
        help="budget from a frame's arrival to its output; later frames are passed through "
        "unrestored, older ones dropped (default: 250)",
    )
    _add_region_options(live)
    _add_provenance_options(live, "with --record, its name with .restored.jsonl, beside it")
    live.add_argument(
        "--inpainter",
        choices=["auto", "model", "telea", "ns"],
        default="auto",
        help="model: the audio-driven network (--model, --backend), hearing the last seconds "
        "of the stream's speech; telea/ns: OpenCV baselines; auto: the model when its weights "
        "are installed, else telea (default: auto)",
    )
    live.add_argument(
        "--model-threads",
        type=int,
        default=0,
        metavar="N",
        help="onnxruntime threads for the model, 0 = onnxruntime's default (default: 0)",
    )
    live.add_argument(
        "--inpaint-radius-px",
        type=float,
        default=5.0,
        help="OpenCV inpainting neighbourhood radius (default: 5)",
    )
    live.add_argument(
        "--detect-every",
        type=int,
        default=5,
        help="run the face detector every N frames, track in between (default: 5)",
    )
    live.add_argument(
        "--feather-px",
        type=float,
        default=FEATHER_PX,
        help="width of the blend ramp inside the restored region, crop pixels; pixels "
        f"outside the region never change (default: {FEATHER_PX:g}, a hard edge)",
    )
    live.add_argument(
        "--rtsp-transport",
        choices=["tcp", "udp"],
        default="tcp",
        help="how to read an RTSP source (default: tcp)",
    )
    live.add_argument(
        "--reconnect-max-s",
        type=float,
        default=10.0,
        help="longest wait between reconnection attempts (default: 10)",
    )
    live.add_argument(
        "--give-up-after-s",
        type=float,
        help="fail when the source stays unreachable this long (default: keep trying)",
    )
    live.add_argument(
        "--bitrate-kbps", type=int, default=2000, help="served H.264 bitrate (default: 2000)"
    )
    live.add_argument(
        "--crf", type=int, default=23, help="recording H.264 quality, 0-51 (default: 23)"
    )
    live.add_argument(
        "--preset", default="veryfast", help="recording libx264 preset (default: veryfast)"
    )
    live.add_argument(
        "--stats-every-s",
        type=float,
        default=5.0,
        help="print a stats line this often (default: 5)",
    )
    live.add_argument(
        "--no-reuse",
        action="store_true",
        help="regenerate every face of every restored frame (default: reuse a track's "
        "restored crop until the visible face changes, then cross-fade; steadier, and "
        "faster, which keeps more frames within the latency budget)",
    )
    live.add_argument(
        "--no-speaker",
        action="store_true",
        help="do not track the speaker's voice (VAD); the model then keeps its neutral speaker",
    )
    add_backend_arguments(live)


def _run_live(args: argparse.Namespace) -> int:
    from stream.live import LiveSession, LiveStats, is_url, run_live

    outputs, options = live_settings(args)
    # LiveSession checks this too, but only after the slow loads below (segmenter, model):
    # a mistyped path should fail at once, like the usage errors above.
    if not is_url(args.source) and not Path(args.source).is_file():
        raise InputError(f"source not found: {args.source}")
    occlusion = occlusion_model(args)

    def started(session: LiveSession) -> None:
        if session.served_url:
            print(
                f"avstream live: serving {session.served_url} "
                f"(watch: ffplay -rtsp_transport tcp {session.served_url})",
                flush=True,
            )
        if args.record:
            print(f"avstream live: recording to {args.record}", flush=True)
        print("avstream live: press Ctrl-C to stop", flush=True)

    def stats(line: LiveStats) -> None:
        print(f"avstream live: {line.line()}", file=sys.stderr, flush=True)

    # The model is opened (and exported to ONNX on first use) before run_live starts the RTSP
    # server: once GStreamer is loaded, torch's ONNX exporter aborts the process.
    with open_inpainter(args, threads=args.model_threads) as (inpainter, speaker_sink):
        report = run_live(
            args.source,
            inpainter,
            occlusion,
            outputs,
            options,
            on_start=started,
            on_stats=stats,
            speaker_sink=speaker_sink,
        )
    recorded = f"; wrote {report.recorded}" if report.recorded else ""
    print(
        f"avstream live: {report.stopped} after {report.wall_s:.0f} s: "
        f"{report.frames_out} frames out ({report.restored} restored with {report.inpainter}, "
        f"{report.passed_through} passed through), {report.dropped} dropped, "
        f"{report.reconnects} reconnects, latency p50 {report.latency_p50_ms:.0f} ms "
        f"p95 {report.latency_p95_ms:.0f} ms, {report.speaker_windows} speaker windows used, "
        f"{report.faces_reused} faces reused{recorded}"
    )
    if args.record and report.recorded is None:
        print("avstream: warning: nothing was recorded (no frame arrived)", file=sys.stderr)
    return EXIT_OK


def live_settings(args: argparse.Namespace) -> tuple[LiveOutputs, LiveOptions]:
    """The outputs and options of the ``live`` arguments (``live``, and each camera of
    ``fleet``); raises ``UsageError`` on a bad value."""
    from stream.live import LiveOptions, LiveOutputs, SourceOptions
    from stream.rtsp import parse_rtsp_url

    if args.detect_every < 1:
        raise UsageError(f"--detect-every must be >= 1, got {args.detect_every}")
    if args.reconnect_max_s < 0.5:
        raise UsageError(f"--reconnect-max-s must be >= 0.5, got {args.reconnect_max_s}")
    if args.model_threads < 0:
        raise UsageError(f"--model-threads must be >= 0, got {args.model_threads}")
    outputs = LiveOutputs(
        serve=parse_rtsp_url(args.serve) if args.serve else None, record=args.record
    )
    options = LiveOptions(
        max_latency_ms=args.max_latency_ms,
        tracker=TrackerOptions(detect_every=args.detect_every),
        feather_px=args.feather_px,
        source=SourceOptions(
            rtsp_transport=args.rtsp_transport,
            backoff_max_s=args.reconnect_max_s,
            give_up_after_s=args.give_up_after_s,
        ),
        record_encode=EncodeOptions(crf=args.crf, preset=args.preset),
        serve_bitrate_kbps=args.bitrate_kbps,
        stats_interval_s=args.stats_every_s,
        speaker=not args.no_speaker,
        reuse=None if args.no_reuse else ReuseOptions(),
        sidecar=not args.no_sidecar,
        mark_restored=args.mark_restored,
    )
    return outputs, options


def _add_serve(sub: argparse._SubParsersAction[_Parser]) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the ZeroMQ frame service",
        description="Serve frame restoration over ZeroMQ (protocol: docs/protocol.md).",
    )
    serve.add_argument(
        "--bind",
        default="tcp://127.0.0.1:5555",
        help="endpoint to bind (default: loopback tcp://127.0.0.1:5555)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=0,
        help="worker processes behind a broker; 0 = handle in this process",
    )
    serve.add_argument(
        "--curve-keys",
        type=Path,
        metavar="DIR",
        help="require CURVE authentication: DIR/server.key_secret and "
        "DIR/authorized_clients/*.key (make them with avstream keygen)",
    )
    serve.add_argument(
        "--allow-insecure-remote",
        action="store_true",
        help="allow a non-loopback bind without --curve-keys",
    )
    serve.add_argument("--max-streams", type=int, default=64)
    serve.add_argument("--max-frame-mb", type=float, default=32.0)
    serve.add_argument("--idle-timeout-s", type=float, default=60.0)
    serve.add_argument(
        "--inpainter",
        choices=["auto", "model", "telea", "ns"],
        default="auto",
        help="what a stream restores with unless its 'open' says: model: the audio-driven "
        "network (--model, --backend; each worker holds one, and each stream is heard through "
        "its own 'audio' messages); telea/ns: OpenCV baselines, and no model is loaded; auto: "
        "the model when its weights are installed, else telea (default: auto)",
    )
    serve.add_argument(
        "--model-threads",
        type=int,
        default=0,
        metavar="N",
        help="onnxruntime threads for each worker's model, 0 = onnxruntime's default; with "
        "several workers, about cores / workers (default: 0)",
    )
    add_backend_arguments(serve)
    keygen = sub.add_parser(
        "keygen",
        help="make CURVE keys for serve --curve-keys",
        description="Write a server key pair and client key pairs into DIR; the clients' "
        "public keys are authorised (copied into DIR/authorized_clients).",
    )
    keygen.add_argument("directory", type=Path)
    keygen.add_argument(
        "--clients", nargs="+", default=["client"], help="client key names (default: client)"
    )


def _run_serve(args: argparse.Namespace) -> int:
    import functools

    from stream.protocol import Limits
    from stream.service import CurveKeys, InpainterChoice, ModelOpener, is_loopback, serve

    if args.workers < 0 or args.max_streams < 1 or args.max_frame_mb <= 0:
        raise UsageError("--workers >= 0, --max-streams >= 1 and --max-frame-mb > 0 are required")
    if args.idle_timeout_s <= 0:
        raise UsageError("--idle-timeout-s must be positive")
    if args.model_threads < 0:
        raise UsageError(f"--model-threads must be >= 0, got {args.model_threads}")
    if args.max_batch < 1:  # checked again in the workers, where it could only fail the start
        raise UsageError(f"--max-batch must be >= 1, got {args.max_batch}")
    if not is_loopback(args.bind) and args.curve_keys is None and not args.allow_insecure_remote:
        raise UsageError(
            f"{args.bind} is reachable from other machines; add --curve-keys DIR "
            "(or --allow-insecure-remote on a trusted network)"
        )
    try:
        curve = CurveKeys.from_dir(args.curve_keys) if args.curve_keys else None
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    limits = Limits(
        max_frame_bytes=int(args.max_frame_mb * 1024 * 1024),
        max_streams=args.max_streams,
        idle_timeout_s=args.idle_timeout_s,
    )
    open_model: ModelOpener | None = None
    inpainter: InpainterChoice = "ns" if args.inpainter == "ns" else "telea"
    if _wants_model(args):
        # Each worker process opens its own model with this (spawned workers get it pickled,
        # hence a partial over plain values rather than a closure).
        model_args = argparse.Namespace(
            model=args.model,
            backend=args.backend,
            precision=args.precision,
            max_batch=args.max_batch,
            engine_cache=args.engine_cache,
            blend=args.blend,
            no_guard=args.no_guard,
        )
        open_model = functools.partial(open_model_inpainter, model_args, args.model_threads)
        inpainter = "model"

    def ready(endpoint: str) -> None:
        auth = "CURVE" if curve else "no authentication"
        model = f" {args.model} on {args.backend}" if inpainter == "model" else ""
        print(
            f"avstream serve: listening on {endpoint} ({args.workers} workers, {auth}, "
            f"streams restore with {inpainter}{model} by default)",
            flush=True,
        )

    try:
        serve(
            args.bind,
            workers=args.workers,
            limits=limits,
            curve=curve,
            open_model=open_model,
            inpainter=inpainter,
            on_ready=ready,
        )
    except KeyboardInterrupt:
        print("avstream serve: stopped", file=sys.stderr)
    return EXIT_OK


def _run_keygen(args: argparse.Namespace) -> int:
    from stream.service import generate_keys

    generate_keys(args.directory, tuple(args.clients))
    print(
        f"wrote CURVE keys to {args.directory}: give clients server.key and their own "
        "NAME.key_secret"
    )
    return EXIT_OK


def occlusion_model(args: argparse.Namespace) -> OcclusionModel:
    """The region model the region options ask for: the segmenter (the default), or the
    fixed region of --mask-box / --mask-image. Raises ``UsageError`` for bad options (shared
    by process, live, batch and fleet)."""
    fixed = args.mask_box is not None or args.mask_image is not None
    if fixed:
        if args.mask_threshold is not None:
            raise UsageError("--mask-threshold applies to detection, not to a fixed region")
        if args.mask_dilate_px is not None:
            raise UsageError("--mask-dilate-px applies to detection, not to a fixed region")
        if args.mask_plain_edges:
            raise UsageError("--mask-plain-edges applies to detection, not to a fixed region")
        if args.no_past_crop:
            raise UsageError("--no-past-crop applies to detection, not to a fixed region")
        if args.mask_hard_edges:
            raise UsageError("--mask-hard-edges applies to detection, not to a fixed region")
        return FixedRegion(_fixed_region_mask(args))
    from stream.mask_detect import MaskDetectOptions, MaskDetector

    fraction = args.mask_threshold
    if fraction is None:
        fraction = MaskDetectOptions.covered_fraction
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"--mask-threshold must be within (0, 1], got {fraction}")
    dilate = args.mask_dilate_px
    if dilate is None:
        dilate = MaskDetectOptions.dilate_px
    if not 0 <= dilate <= 64:
        raise UsageError(f"--mask-dilate-px must be within 0..64, got {dilate}")
    guide = 0 if args.mask_plain_edges else MaskDetectOptions.guide_radius_px
    options = MaskDetectOptions(covered_fraction=fraction, dilate_px=dilate, guide_radius_px=guide)
    if args.no_past_crop:
        options = dataclasses.replace(options, past_crop=None)
    if args.mask_hard_edges:
        options = dataclasses.replace(options, rim_px=0)
    # Raises AvstreamError (exit 1) when the package was installed without its weights.
    return MaskDetector(options)


def _run_process(args: argparse.Namespace) -> int:
    occlusion = occlusion_model(args)
    options = process_options(args)
    with open_inpainter(args, threads=args.threads) as (inpainter, speaker_sink):
        sink = process_speaker_sink(args, inpainter, speaker_sink)
        report = _process_with_progress(args, inpainter, occlusion, options, sink)
    _print_summary(report)
    return EXIT_OK


def process_speaker_sink(
    args: argparse.Namespace, inpainter: Inpainter, speaker_sink: SpeakerSink | None
) -> SpeakerSink | StagedSpeakerSink | None:
    """What hears the speech in ``process`` (and in each file of ``batch``): nothing with
    ``--speaker-audio none``, the model itself when it stages its speaker front end, else
    ``speaker_sink``."""
    if args.speaker_audio == "none":
        return None
    if speaker_sink is not None and isinstance(inpainter, StagedSpeakerSink):
        return inpainter  # the same windows, the speaker front end in a stage of its own
    return speaker_sink


def process_options(args: argparse.Namespace) -> ProcessOptions:
    """The ``ProcessOptions`` of ``add_process_options``' arguments (``process``, ``batch``)."""
    if args.detect_every < 1:
        raise UsageError(f"--detect-every must be >= 1, got {args.detect_every}")
    return ProcessOptions(
        tracker=TrackerOptions(detect_every=args.detect_every),
        encode=EncodeOptions(crf=args.crf, preset=args.preset, threads=args.threads),
        feather_px=args.feather_px,
        reuse=None if args.no_reuse else ReuseOptions(),
        decode_threads=args.threads,
        speaker_audio=_speaker_audio(args),
        sidecar=not args.no_sidecar,
        mark_restored=args.mark_restored,
    )


def _speaker_audio(args: argparse.Namespace) -> Path | None:
    """``--speaker-audio PATH`` (None for the input's own audio or ``none``)."""
    if args.speaker_audio in (None, "none"):
        return None
    path = Path(args.speaker_audio)
    if not path.is_file():
        raise UsageError(f"--speaker-audio {path} is not a file")
    return path


SpeakerSink = Callable[[SpeechWindow], None]


@contextlib.contextmanager
def open_inpainter(
    args: argparse.Namespace, threads: int
) -> Iterator[tuple[Inpainter, SpeakerSink | None]]:
    """The inpainter ``--inpainter`` asks for (``process`` and ``live``) and its speaker sink:
    the model's ``use_speech`` (the model is closed on exit), or OpenCV with no sink."""
    if _wants_model(args):
        with open_model_inpainter(args, threads=threads) as model:
            yield model, model.use_speech
    else:
        method: OpenCVMethod = "ns" if args.inpainter == "ns" else "telea"
        yield OpenCVInpainter(method, radius_px=args.inpaint_radius_px), None


def _wants_model(args: argparse.Namespace) -> bool:
    if args.inpainter in ("telea", "ns"):
        return False
    if args.inpainter == "model":
        return True
    from avinpaint.checkpoint import CheckpointError, resolve

    try:
        resolve(args.model)
    except CheckpointError:
        logging.getLogger(__name__).warning(
            "no weights for model %r are installed: using the OpenCV Telea baseline", args.model
        )
        return False
    return True


def _process_with_progress(
    args: argparse.Namespace,
    inpainter: Inpainter,
    region: OcclusionModel,
    options: ProcessOptions,
    speaker_sink: SpeakerSink | StagedSpeakerSink | None = None,
) -> ProcessReport:
    from tqdm import tqdm

    with tqdm(
        unit="frame",
        desc=args.input.name,
        disable=args.no_progress or None,  # None: hide when stderr is not a terminal
        dynamic_ncols=True,
    ) as bar:

        def progress(done: int, total: int | None) -> None:
            if total is not None:
                total = max(total, done)  # the count is an estimate for some containers
            if bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

        return process_file(
            args.input, args.output, inpainter, region, options, progress, speaker_sink
        )


def _print_summary(report: ProcessReport) -> None:
    tracks = sorted({tid for ids in report.track_ids for tid in ids})
    print(
        f"wrote {report.output}: {report.frames_out} frames, {report.faces_restored} faces "
        f"restored in {len(tracks)} track(s) ({report.faces_regenerated} regenerated), "
        f"audio {report.audio_mode}, {report.fps:.1f} fps"
    )
    if report.faces_guarded:
        line = f"fill guard: {report.faces_guarded} fills checked, {report.faces_fell_back} failed"
        if report.faces_fell_back:
            safe = report.faces_fell_back - report.faces_held
            line += (
                f": {report.faces_held} replaced by the track's last good fill, {safe} by the "
                "safe Telea fill"
            )
        print(line)
    if report.damaged:
        expected = report.expected_frames if report.expected_frames is not None else "?"
        reason = report.stopped_early or f"{report.corrupt_packets} corrupt packet(s)"
        print(
            f"avstream: warning: input is damaged ({reason}); "
            f"processed the {report.frames_in} of {expected} frames that decode",
            file=sys.stderr,
        )
    # -v: what the region model decided for each track (coverage, covered, restored).
    log = logging.getLogger(__name__)
    for track in report.coverage:
        log.info("%s", track.line())


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the same path as Ctrl-C: stages stop and the temporary output is removed.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``avstream`` console script."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["eval"]:
        from training.__main__ import main as training_main

        return training_main(args_list)  # "eval ..." is a training subcommand
    if args_list[:1] == ["train"]:
        # The training CLI has its own subcommands (prepare, ...); hand it the rest verbatim.
        from training.__main__ import main as training_main

        return training_main(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="avstream: %(levelname)s: %(message)s",
    )
    try:
        if args.command == "process":
            return _run_process(args)
        if args.command == "live":
            return _run_live(args)
        if args.command == "serve":
            return _run_serve(args)
        if args.command == "keygen":
            return _run_keygen(args)
        if args.command == "convert":
            return _run_convert(args)
        if args.command == "engines":
            return run_engines(args)
        if args.command == "batch":
            return run_batch_command(args)
        if args.command == "fleet":
            return run_fleet_command(args)
        parser.error(f"unknown command {args.command}")
    except UsageError as exc:
        print(f"avstream: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AvstreamError as exc:
        print(f"avstream: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("avstream: interrupted; no output written", file=sys.stderr)
        return 130
    return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
