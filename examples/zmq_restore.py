"""Send a video file through a running ``avstream serve`` and write the restored result.

    avstream serve &                                   # in another terminal
    python examples/zmq_restore.py input.mp4 -o restored.mp4 [--endpoint tcp://127.0.0.1:5555]

The frames travel as raw BGR pixels (or JPEG with --jpeg); the output keeps every frame's
timestamp and copies the input's audio packets, exactly like ``avstream process``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stream.client import FrameClient
from stream.media import AtomicOutput, EncodeOptions, VideoReader, VideoWriter, probe
from stream.types import VideoFrame


def main(argv: list[str] | None = None) -> int:
    """Restore ``input`` through the service and write ``--output``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("input", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5555")
    parser.add_argument("--mask-box", type=int, nargs=4, metavar=("X", "Y", "W", "H"))
    parser.add_argument("--jpeg", action="store_true", help="send JPEG instead of raw pixels")
    args = parser.parse_args(argv)

    info = probe(args.input)
    options = {"mask_box": args.mask_box} if args.mask_box else {}
    faces = 0
    with (
        FrameClient(args.endpoint, timeout_s=30) as client,
        VideoReader(args.input) as reader,
        AtomicOutput(args.output) as atomic,
        VideoWriter(atomic.temp_path, info, EncodeOptions(), copy_audio_from=args.input) as out,
    ):
        client.open_stream("example", **options)
        for frame in reader:
            restored = client.restore("example", frame.image, time_s=frame.time_s, jpeg=args.jpeg)
            faces += len(restored.faces)
            out.write(VideoFrame(frame.index, frame.pts, frame.time_base, restored.image.copy()))
        out.finish()
        atomic.commit()
    print(f"wrote {args.output}: {reader.stats.frames} frames, {faces} faces restored")
    return 0


if __name__ == "__main__":
    sys.exit(main())
