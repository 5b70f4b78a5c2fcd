"""Provenance: the region codec is exact, the sidecar is atomic and reads back what was
written, the outline touches only the region's edge, and the tool rebuilds frame masks."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from stream import provenance
from stream.provenance import (
    EncodedRegion,
    FaceProvenance,
    FrameProvenance,
    SidecarHeader,
    SidecarWriter,
    decode_region,
    draw_outline,
    encode_region,
    outline_pixels,
    read_sidecar,
    region_area,
    restored_mask,
    sidecar_path,
)

Mask = npt.NDArray[np.bool_]


def _ellipse(
    shape: tuple[int, int], centre: tuple[int, int], axes: tuple[int, int], angle: float = 20.0
) -> Mask:
    canvas = np.zeros(shape, dtype=np.uint8)
    cv2.ellipse(canvas, centre, axes, angle, 0.0, 360.0, 1, -1)
    return canvas > 0


def _assert_round_trip(mask: Mask) -> EncodedRegion:
    encoded = encode_region(mask)
    # Through real JSON, as the sidecar and the service carry it.
    carried = json.loads(json.dumps(encoded))
    assert np.array_equal(decode_region(carried, mask.shape), mask)
    assert region_area(carried) == int(mask.sum())
    return encoded


# --- the region codec --------------------------------------------------------------------


def test_random_masks_round_trip() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        mask = rng.random(shape) < rng.random()
        _assert_round_trip(mask)


@pytest.mark.parametrize(
    ("centre", "axes"),
    [((320, 180), (100, 60)), ((0, 0), (50, 30)), ((639, 359), (80, 40)), ((320, 180), (400, 300))],
    ids=["inside", "top-left", "bottom-right", "over-every-border"],
)
def test_ellipses_round_trip(centre: tuple[int, int], axes: tuple[int, int]) -> None:
    mask = _ellipse((360, 640), centre, axes)
    encoded = _assert_round_trip(mask)
    rows, cols = np.nonzero(mask)
    x, y = int(cols.min()), int(rows.min())
    assert encoded["box"] == [x, y, int(cols.max()) + 1 - x, int(rows.max()) + 1 - y]


def test_empty_mask_has_a_defined_encoding() -> None:
    mask = np.zeros((360, 640), dtype=bool)
    assert _assert_round_trip(mask) == {"box": [0, 0, 0, 0], "counts": ""}
    assert not decode_region({"box": [0, 0, 0, 0], "counts": []}, (4, 5)).any()


def test_full_frame_and_single_pixels_round_trip() -> None:
    full = np.ones((360, 640), dtype=bool)
    assert _assert_round_trip(full)["box"] == [0, 0, 640, 360]
    for y, x in [(0, 0), (0, 639), (359, 0), (359, 639), (100, 200)]:
        single = np.zeros((360, 640), dtype=bool)
        single[y, x] = True
        assert _assert_round_trip(single)["box"] == [x, y, 1, 1]
    assert _assert_round_trip(np.ones((1, 1), dtype=bool))["box"] == [0, 0, 1, 1]


def test_box_starting_with_a_set_pixel_and_hollow_shapes() -> None:
    ring = _ellipse((100, 120), (60, 50), (40, 30)) & ~_ellipse((100, 120), (60, 50), (20, 15))
    _assert_round_trip(ring)
    diagonal = np.eye(50, dtype=bool)  # the box's first pixel is set: a leading 0 run
    _assert_round_trip(diagonal)
    _assert_round_trip(~diagonal)


def test_ellipse_encoding_is_compact() -> None:
    mask = _ellipse((360, 640), (320, 180), (100, 60), angle=0.0)
    encoded = encode_region(mask)
    # Measured: 304 characters where a JSON list of the runs takes 754.
    assert len(encoded["counts"]) < 340
    assert len(json.dumps(encoded)) < 400
    tilted = encode_region(_ellipse((360, 640), (320, 180), (100, 60)))
    assert len(tilted["counts"]) < 400


def test_counts_may_be_a_plain_list_of_runs() -> None:
    mask = np.array([[True, False, True], [True, True, False]])
    listed = {"box": [0, 0, 3, 2], "counts": [0, 1, 1, 3, 1]}
    assert np.array_equal(decode_region(listed, (2, 3)), mask)
    restored = FaceProvenance.from_json(_face_json(region=listed))
    assert restored.region is not None and isinstance(restored.region["counts"], str)
    assert np.array_equal(decode_region(restored.region, (2, 3)), mask)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@pytest.mark.parametrize(
    ("encoded", "message"),
    [
        ({"counts": ""}, "box"),
        ({"box": [0, 0, 2], "counts": ""}, "box"),
        ({"box": [0, -1, 2, 2], "counts": ""}, "box"),
        ({"box": [0, 0, True, 2], "counts": ""}, "box"),
        ({"box": [0, 0, 2.5, 2], "counts": ""}, "box"),
        ({"box": [9, 0, 2, 2], "counts": [0, 4]}, "outside"),
        ({"box": [0, 7, 2, 2], "counts": [0, 4]}, "outside"),
        ({"box": [0, 0, 2, 2], "counts": [0, 3]}, "cover 3 pixels"),
        ({"box": [0, 0, 2, 2], "counts": [1, 2, 3]}, "cover 6 pixels"),
        ({"box": [0, 0, 2, 2], "counts": [5, -1]}, "negative"),
        ({"box": [0, 0, 2, 2], "counts": [0, "4"]}, "ints"),
        ({"box": [0, 0, 2, 2], "counts": [0, 2**70]}, "too large"),
        ({"box": [0, 0, 2, 2], "counts": 4}, "string or a list"),
        ({"box": [0, 0, 2, 2], "counts": "not base64!"}, "base64"),
        ({"box": [0, 0, 2, 2], "counts": _b64(b"\x80")}, "varint"),
        ({"box": [0, 0, 2, 2], "counts": _b64(b"\xff" * 6 + b"\x01")}, "varint"),
        ({"box": [0, 0, 2, 2], "counts": _b64(bytes([1]))}, "negative"),
        ({"box": [0, 0, 0, 0], "counts": [0, 4]}, "empty"),
        ({"box": [3, 1, 0, 0], "counts": ""}, "empty"),
        ([0, 0, 2, 2], "object"),
    ],
)
def test_malformed_regions_raise_one_line(encoded: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        decode_region(encoded, (8, 10))  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


def test_encode_wants_a_2d_mask() -> None:
    with pytest.raises(ValueError, match="2-D"):
        encode_region(np.zeros((2, 2, 3), dtype=bool))


# --- records -----------------------------------------------------------------------------


def _face_json(**changes: object) -> dict[str, object]:
    face: dict[str, object] = {
        "track_id": 3,
        "box": [10.5, 20.0, 100.0, 120.0],
        "coverage": 0.4,
        "covered": True,
        "restored": True,
        "backend": "lite",
        "fallback": False,
        "region": None,
    }
    face.update(changes)
    return face


def _frame(index: int, shape: tuple[int, int], masks: list[Mask | None]) -> FrameProvenance:
    faces = tuple(
        FaceProvenance(
            track_id=t,
            box=(10.0 * t, 5.0, 50.25, 60.0),
            coverage=0.1 + 0.1 * t,
            covered=mask is not None,
            restored=mask is not None,
            backend="lite" if mask is not None else None,
            fallback=t == 2,
            region=None if mask is None else encode_region(mask),
        )
        for t, mask in enumerate(masks)
    )
    return FrameProvenance(index=index, pts=index * 512, time_s=index / 25.0, faces=faces)


def test_records_round_trip_through_json() -> None:
    shape = (120, 160)
    frame = _frame(7, shape, [_ellipse(shape, (40, 60), (20, 30)), None])
    again = FrameProvenance.from_json(json.loads(json.dumps(frame.to_json())))
    assert again == frame
    bare = FrameProvenance(index=0, pts=None, time_s=None)
    assert FrameProvenance.from_json(json.loads(json.dumps(bare.to_json()))) == bare
    # Whole numbers read back as floats where floats are meant.
    face = FaceProvenance.from_json(_face_json(box=[1, 2, 3, 4], coverage=1))
    assert face.box == (1.0, 2.0, 3.0, 4.0) and isinstance(face.coverage, float)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"track_id": "3"}, "track_id"),
        ({"track_id": True}, "track_id"),
        ({"covered": 1}, "covered"),
        ({"box": [1, 2, 3]}, "box"),
        ({"box": [1, 2, 3, "4"]}, "box"),
        ({"coverage": None}, "coverage"),
        ({"backend": 5}, "backend"),
        ({"region": [1, 2]}, "region"),
        ({"region": {"box": [0, 0, 1, 1], "counts": [-1, 2]}}, "negative"),
    ],
)
def test_malformed_faces_raise(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaceProvenance.from_json(_face_json(**changes))


def test_missing_keys_raise() -> None:
    face = _face_json()
    del face["fallback"]
    with pytest.raises(ValueError, match="fallback"):
        FaceProvenance.from_json(face)
    with pytest.raises(ValueError, match="faces"):
        FrameProvenance.from_json({"index": 0, "pts": None, "time_s": None})
    with pytest.raises(ValueError, match="pts"):
        FrameProvenance.from_json({"index": 0, "pts": 1.5, "time_s": None, "faces": []})


def test_restored_mask_is_the_union_of_face_regions() -> None:
    shape = (120, 160)
    a = _ellipse(shape, (40, 60), (20, 30))
    b = _ellipse(shape, (50, 60), (30, 10))  # overlaps a
    frame = _frame(0, shape, [a, None, b])
    assert np.array_equal(restored_mask(frame, shape), a | b)
    assert not restored_mask(_frame(1, shape, [None]), shape).any()


# --- the sidecar -------------------------------------------------------------------------


def test_sidecar_path_sits_next_to_the_output(tmp_path: Path) -> None:
    assert sidecar_path(Path("out.mp4")) == Path("out.restored.jsonl")
    assert sidecar_path(tmp_path / "a.b.mkv") == tmp_path / "a.b.restored.jsonl"
    assert sidecar_path(Path("clip")) == Path("clip.restored.jsonl")


def _frames(shape: tuple[int, int], count: int) -> list[FrameProvenance]:
    frames = []
    for i in range(count):
        moving = _ellipse(shape, (30 + 5 * i, 50), (15, 20))
        frames.append(_frame(i, shape, [moving, None] if i % 3 else [None, None]))
    return frames


def test_sidecar_reads_back_what_was_written(tmp_path: Path) -> None:
    shape = (90, 160)
    header = SidecarHeader(width=160, height=90, video="out.mp4", extra={"mode": "process"})
    frames = _frames(shape, 12)
    path = tmp_path / "out.restored.jsonl"
    with SidecarWriter(path, header) as writer:
        for frame in frames:
            writer.write(frame)
        # Nothing at the final path until the block ends.
        assert not path.exists()
    assert writer.frames_written == 12
    assert [p.name for p in tmp_path.iterdir()] == ["out.restored.jsonl"]
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 13
    assert json.loads(lines[0]) == {
        "avstream_provenance": 1,
        "width": 160,
        "height": 90,
        "video": "out.mp4",
        "mode": "process",
    }
    read_header, read_frames = read_sidecar(path)
    assert read_header == header and read_header.shape == shape
    read_back = list(read_frames)
    assert read_back == frames
    for frame in read_back:
        expected = restored_mask(frames[frame.index], shape)
        assert np.array_equal(restored_mask(frame, read_header.shape), expected)


def test_sidecar_is_removed_when_the_run_fails(tmp_path: Path) -> None:
    path = tmp_path / "out.restored.jsonl"
    header = SidecarHeader(width=64, height=48)
    with pytest.raises(RuntimeError, match="encoder died"), SidecarWriter(path, header) as writer:
        writer.write(FrameProvenance(index=0, pts=0, time_s=0.0))
        assert len(list(tmp_path.iterdir())) == 1  # the temporary file, not the target
        raise RuntimeError("encoder died")
    assert list(tmp_path.iterdir()) == []


def test_sidecar_keeps_an_existing_file_when_the_run_fails(tmp_path: Path) -> None:
    path = tmp_path / "out.restored.jsonl"
    path.write_text("previous run\n", encoding="utf-8")
    with pytest.raises(KeyboardInterrupt), SidecarWriter(path, SidecarHeader(64, 48)):
        raise KeyboardInterrupt
    assert path.read_text(encoding="utf-8") == "previous run\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.restored.jsonl"]


def test_writer_rejects_what_it_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "out.restored.jsonl"
    nan_face = FaceProvenance(3, (0.0, 0.0, 1.0, 1.0), float("nan"), False, False)
    with pytest.raises(ValueError, match="finite"), SidecarWriter(path, SidecarHeader(64, 48)) as w:
        w.write(FrameProvenance(index=0, pts=0, time_s=0.0, faces=(nan_face,)))
    big = _frame(0, (100, 100), [_ellipse((100, 100), (50, 50), (40, 40))])
    with (
        pytest.raises(ValueError, match="outside"),
        SidecarWriter(path, SidecarHeader(64, 48)) as w,
    ):
        w.write(big)
    with pytest.raises(ValueError, match="clash"):
        SidecarWriter(path, SidecarHeader(64, 48, extra={"width": 3})).__enter__()
    with pytest.raises(RuntimeError, match="outside its with block"):
        SidecarWriter(path, SidecarHeader(64, 48)).write(big)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ('{"width": 4, "height": 4}\n', "not an avstream provenance"),
        ('{"avstream_provenance": 2, "width": 4, "height": 4}\n', "unsupported"),
        ('{"avstream_provenance": 1, "width": 0, "height": 4}\n', "positive"),
        ('{"avstream_provenance": 1, "width": 4, "height": 4}\n{"index": 0\n', ":2: not JSON"),
        ('{"avstream_provenance": 1, "width": 4, "height": 4}\n\n[1]\n', ":3: expected"),
    ],
)
def test_malformed_sidecars_raise_with_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.restored.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        _, frames = read_sidecar(path)
        list(frames)


# --- the outline -------------------------------------------------------------------------


def _near_edge(mask: Mask, thickness: int) -> Mask:
    """Mask pixels with a pixel outside the mask (or outside the frame) within ``thickness``
    in chessboard distance: a brute-force reference for ``outline_pixels``."""
    padded = np.pad(mask, thickness, constant_values=False)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (2 * thickness + 1,) * 2)
    return mask & ~windows.all(axis=(2, 3))


@pytest.mark.parametrize("thickness", [1, 2, 4])
def test_outline_changes_only_pixels_near_the_edge(thickness: int) -> None:
    rng = np.random.default_rng(thickness)
    image = rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    original = image.copy()
    # One region cut by the frame's edge, one inside, one with a hole.
    mask = _ellipse((120, 160), (0, 60), (30, 40)) | _ellipse((120, 160), (100, 60), (40, 30))
    mask &= ~_ellipse((120, 160), (100, 60), (10, 8))
    marked = draw_outline(image, mask, colour=(1, 2, 3), thickness_px=thickness)
    assert np.array_equal(image, original), "the input is not modified"
    changed = (marked != image).any(axis=2)
    expected = _near_edge(mask, thickness)
    assert np.array_equal(outline_pixels(mask, thickness), expected)
    assert not (changed & ~expected).any(), "only pixels within the thickness of the edge"
    assert (marked[expected] == (1, 2, 3)).all()
    # The outline is visible: it lies on every edge, including the frame border and the hole.
    hole = _ellipse((120, 160), (100, 60), (10, 8))
    next_to_hole = mask & (cv2.dilate(hole.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
    assert next_to_hole.any() and expected[next_to_hole].all()
    assert mask[:, 0].any() and expected[:, 0][mask[:, 0]].all()
    assert (mask & ~expected).sum() > 0.3 * mask.sum(), "the inside of the region is left alone"


def test_outline_of_nothing_changes_nothing() -> None:
    image = np.full((20, 30, 3), 7, dtype=np.uint8)
    assert np.array_equal(draw_outline(image, np.zeros((20, 30), dtype=bool)), image)


def test_outline_rejects_bad_arguments() -> None:
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="thickness"):
        draw_outline(image, np.ones((20, 30), dtype=bool), thickness_px=0)
    with pytest.raises(ValueError, match="shape"):
        draw_outline(image, np.ones((30, 20), dtype=bool))
    with pytest.raises(ValueError, match="colour"):
        draw_outline(image, np.ones((20, 30), dtype=bool), colour=(0, 300, 0))
    with pytest.raises(ValueError, match="BGR"):
        draw_outline(image[:, :, 0], np.ones((20, 30), dtype=bool))


# --- the tool ----------------------------------------------------------------------------


@pytest.fixture
def sidecar(tmp_path: Path) -> tuple[Path, list[FrameProvenance]]:
    frames = _frames((90, 160), 6)
    path = tmp_path / "clip.restored.jsonl"
    with SidecarWriter(path, SidecarHeader(width=160, height=90, video="clip.mp4")) as writer:
        for frame in frames:
            writer.write(frame)
    return path, frames


def test_cli_writes_the_frame_mask_png(
    tmp_path: Path,
    sidecar: tuple[Path, list[FrameProvenance]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, frames = sidecar
    png = tmp_path / "mask.png"
    assert provenance.main([str(path), "--frame", "4", "-o", str(png)]) == 0
    assert "mask.png" in capsys.readouterr().out
    written = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    assert written is not None
    assert written.dtype == np.uint8 and written.shape == (90, 160)
    expected = restored_mask(frames[4], (90, 160))
    assert expected.any()
    assert np.array_equal(written, expected.astype(np.uint8) * 255)


def test_cli_summary_counts_per_track(
    sidecar: tuple[Path, list[FrameProvenance]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, frames = sidecar
    assert provenance.main([str(path), "--summary"]) == 0
    summary = json.loads(capsys.readouterr().out)
    restored = [f.faces[0].region for f in frames if f.faces[0].region is not None]
    assert summary["frames"] == 6
    assert summary["tracks"]["0"] == {
        "frames": 6,
        "covered": len(restored),
        "restored": len(restored),
        "fallback": 0,
        "restored_px": sum(region_area(r) for r in restored),
    }
    assert summary["tracks"]["1"]["restored"] == 0
    assert summary["backends"] == {"lite": len(restored)}


def test_cli_errors(
    tmp_path: Path,
    sidecar: tuple[Path, list[FrameProvenance]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, _ = sidecar
    png = tmp_path / "mask.png"
    assert provenance.main([str(path), "--frame", "99", "-o", str(png)]) == 1
    assert "no frame with index 99" in capsys.readouterr().err
    assert not png.exists()
    assert provenance.main([str(tmp_path / "missing.jsonl"), "--summary"]) == 1
    with pytest.raises(SystemExit) as exited:
        provenance.main([str(path), "--frame", "1"])
    assert exited.value.code == 2


def test_encoded_region_is_plain_json_for_the_service() -> None:
    encoded: Mapping[str, object] = encode_region(_ellipse((40, 40), (20, 20), (5, 9)))
    assert set(encoded) == {"box", "counts"}
    assert json.loads(json.dumps(encoded)) == encoded


def test_a_window_of_the_frame_encodes_at_its_origin() -> None:
    frame = np.zeros((90, 160), dtype=bool)
    frame[30:50, 70:100] = True
    frame[41, 60] = True
    window = frame[20:60, 50:120]
    assert encode_region(window, (50, 20)) == encode_region(frame)
    assert np.array_equal(decode_region(encode_region(window, (50, 20)), (90, 160)), frame)
