"""``avstream process`` on real talking-head clips from ../shared/data (skips where absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import audio_packets, face_region_mask, video_frames

from stream.detect import FaceDetector
from stream.inpaint import OpenCVInpainter
from stream.media import EncodeOptions
from stream.occlusion import FixedRegion
from stream.pipeline import ProcessOptions, process_file
from stream.region import box_mask

pytestmark = pytest.mark.realdata

CLIPS = [
    "talking_heads/pcavs/Audio_Source/00015.mp4",  # H.264 + AAC 16 kHz, 224x224
    "talking_heads/grid/GRID/bbaf2n.mpg",  # MPEG-1 + MP2 in MPEG-PS, 360x288
    "misc/ip_lap/129.mp4",  # MPEG-4 part 2, no audio track
]


@pytest.mark.parametrize("relative", CLIPS)
def test_real_clip_keeps_frames_timestamps_audio_and_background(
    shared_data: Path, tmp_path: Path, relative: str
) -> None:
    source = shared_data / relative
    out = tmp_path / "restored.mp4"
    options = ProcessOptions(encode=EncodeOptions(crf=10, preset="veryfast", threads=1))
    report = process_file(source, out, OpenCVInpainter(), FixedRegion(box_mask()), options)

    frames_in, times_in = video_frames(source)
    frames_out, times_out = video_frames(out)
    assert report.frames_out == len(frames_in) == len(frames_out)
    np.testing.assert_allclose(times_out, times_in, atol=1e-6)

    a_in, a_out = audio_packets(source), audio_packets(out)
    assert [p for _, p in a_out] == [p for _, p in a_in]
    np.testing.assert_allclose([t for t, _ in a_out], [t for t, _ in a_in], atol=1e-4)

    # One face per clip, followed by one track from start to end.
    assert {ids for ids in report.track_ids} == {(1,)}

    detector = FaceDetector()
    changed_inside = []
    for i in range(0, len(frames_in), 10):
        a = frames_in[i].astype(np.int16)
        b = frames_out[i].astype(np.int16)
        faces = detector.detect(frames_in[i])
        boxes = np.array([f.box for f in faces]).reshape(-1, 4)
        near = face_region_mask(boxes, a.shape[:2], margin=0.3)
        if (~near).any():
            assert np.abs(a - b)[~near].mean() < 1.5
        changed_inside.append(np.abs(a - b)[near].mean())
    assert np.mean(changed_inside) > 2.0  # the covered region was restored
