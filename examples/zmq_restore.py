"""Send a video file (and its speech) through a running ``avstream serve`` and write the
restored result.

    avstream serve &                                   # in another terminal
    python examples/zmq_restore.py input.mp4 -o restored.mp4 [--endpoint tcp://127.0.0.1:5555]

The frames travel as raw BGR pixels (or JPEG with --jpeg); the output keeps every frame's
timestamp and copies the input's audio packets, exactly like ``avstream process``.

The file's audio is sent too, as 16 kHz mono ``audio`` messages, each before the first frame
that follows it: a stream restored with the model (the service's default when its weights are
installed, or --inpainter model) hears the speaker's voice, as ``avstream process`` does, and
switches from its neutral speaker to that voice once about 2 s of speech have been heard.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from stream.audio import iter_audio_16k
from stream.client import FrameClient
from stream.media import AtomicOutput, EncodeOptions, VideoReader, VideoWriter, probe
from stream.types import AudioChunk, VideoFrame


def main(argv: list[str] | None = None) -> int:
    """Restore ``input`` through the service and write ``--output``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("input", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5555")
    parser.add_argument("--mask-box", type=int, nargs=4, metavar=("X", "Y", "W", "H"))
    parser.add_argument(
        "--inpainter",
        choices=["model", "telea", "ns"],
        help="what the stream restores with (default: the service's default)",
    )
    parser.add_argument("--no-audio", action="store_true", help="send the frames only")
    parser.add_argument("--jpeg", action="store_true", help="send JPEG instead of raw pixels")
    args = parser.parse_args(argv)

    info = probe(args.input)
    options: dict[str, Any] = {}
    if args.mask_box:
        options["mask_box"] = args.mask_box
    if args.inpainter:
        options["inpainter"] = args.inpainter
    # Decoded lazily, alongside the video: only the speech up to the current frame is read.
    audio = iter(()) if args.no_audio else iter_audio_16k(args.input)
    pending: AudioChunk | None = next(audio, None)
    rate = float(info.average_rate or 25)
    faces = speaker_windows = 0
    with (
        FrameClient(args.endpoint, timeout_s=30) as client,
        VideoReader(args.input) as reader,
        AtomicOutput(args.output) as atomic,
        VideoWriter(atomic.temp_path, info, EncodeOptions(), copy_audio_from=args.input) as out,
    ):
        opened = client.open_stream("example", **options)
        for frame in reader:
            # The speech heard before this frame (never after: a live stream has no future).
            # A frame without a timestamp is placed by its number at the nominal rate.
            now_s = frame.time_s if frame.time_s is not None else frame.index / rate
            while pending is not None and pending.pts_s <= now_s:
                client.send_audio("example", pending.samples_16k, time_s=pending.pts_s)
                pending = next(audio, None)
            restored = client.restore("example", frame.image, time_s=frame.time_s, jpeg=args.jpeg)
            faces += len(restored.faces)
            speaker_windows = restored.speaker_windows
            out.write(VideoFrame(frame.index, frame.pts, frame.time_base, restored.image.copy()))
        out.finish()
        atomic.commit()
    print(
        f"wrote {args.output}: {reader.stats.frames} frames, {faces} faces restored with "
        f"{opened.get('inpainter', 'telea')}, {speaker_windows} speaker windows used"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
