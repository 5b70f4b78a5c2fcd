"""The shipped ``lite`` weights (``avinpaint/weights/lite.safetensors``): they load offline by
preset name, stay within the size budget, and restore only the hole of a face crop."""

from __future__ import annotations

import socket
from typing import Any

import cv2
import numpy as np
import pytest
import torch

import avinpaint
from avinpaint.checkpoint import read_metadata, shipped_path
from avinpaint.config import LITE
from avinpaint.spec import CROP_SIZE, CROP_TEMPLATE_256
from stream.model_inpainter import crops_to_input, output_to_crops

MAX_BYTES = 40 * 1024 * 1024
"""Issue 8: shipped safetensors + config at most 40 MB together (the config is inside)."""

WEIGHTS = shipped_path("lite")

pytestmark = pytest.mark.skipif(
    not WEIGHTS.is_file(),
    reason=f"no shipped lite weights at {WEIGHTS} (trained ones are added by issue 8)",
)


def generated_face() -> np.ndarray:
    """A cartoon BGR face crop on the crop template (skin, eyes, nose, mouth)."""
    image = np.full((CROP_SIZE, CROP_SIZE, 3), (60, 90, 40), np.uint8)
    cv2.ellipse(image, (128, 130), (78, 105), 0, 0, 360, (120, 160, 210), -1, cv2.LINE_AA)
    for x, y in CROP_TEMPLATE_256[:2]:
        cv2.circle(image, (int(x), int(y)), 10, (40, 30, 20), -1, cv2.LINE_AA)
    nose = CROP_TEMPLATE_256[2]
    cv2.circle(image, (int(nose[0]), int(nose[1])), 6, (90, 110, 170), -1, cv2.LINE_AA)
    (x0, y0), (x1, y1) = CROP_TEMPLATE_256[3], CROP_TEMPLATE_256[4]
    cv2.line(image, (int(x0), int(y0)), (int(x1), int(y1)), (60, 60, 170), 8)
    return image


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the shipped weights must load without the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_shipped_lite_is_within_the_size_budget() -> None:
    assert WEIGHTS.stat().st_size <= MAX_BYTES
    assert read_metadata(WEIGHTS)["format"] == "avinpaint.generator"


def test_shipped_lite_loads_offline_as_the_lite_preset(no_network: None) -> None:
    model = avinpaint.load("lite")
    assert model.config == LITE
    assert not model.training
    # Weights may be stored as float16 to fit the budget; the model always runs in float32.
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_shipped_lite_changes_only_the_hole(no_network: None) -> None:
    torch.set_num_threads(1)
    model = avinpaint.load("lite")
    crop = generated_face()
    mask = np.zeros((CROP_SIZE, CROP_SIZE), np.float32)
    mask[112:236, 64:192] = 1.0  # nose, mouth and chin
    face = torch.from_numpy(crops_to_input([crop]))
    hole = torch.from_numpy(mask)[None, None]
    generator = torch.Generator().manual_seed(0)
    voice = torch.nn.functional.normalize(torch.randn(1, LITE.speaker_dim, generator=generator))
    for speaker_input in (voice, torch.zeros_like(voice)):
        with torch.inference_mode():
            out = model(face, hole, speaker_input)
        assert out.inpainted.shape == (1, 3, CROP_SIZE, CROP_SIZE)
        assert bool(torch.isfinite(out.inpainted).all())
        restored = output_to_crops(out.inpainted.numpy())[0]
        outside = mask == 0
        np.testing.assert_array_equal(restored[outside], crop[outside])
        inside = mask > 0
        # The hole was filled: not the zeroed input, not a flat colour.
        filled = restored[inside].astype(np.float32)
        assert not np.allclose(filled, 128.0, atol=2.0)
        assert filled.std() > 2.0
        assert np.abs(filled - crop[inside].astype(np.float32)).mean() < 100.0
