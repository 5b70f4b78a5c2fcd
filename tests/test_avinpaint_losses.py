"""Losses against hand-computed values on tiny tensors, edge cases and gradient flow.

Every expected number is worked out in the comment next to it, not by calling the code.
"""

from __future__ import annotations

import math
from typing import TypedDict

import numpy as np
import pytest
import torch
from torch import Tensor

from avinpaint.losses import (
    GeneratorLosses,
    LossWeights,
    PairScores,
    audio_face_loss,
    cosine_distance,
    feature_matching_loss,
    identity_consistency_loss,
    identity_embedding_loss,
    l1_loss,
    masked_l1_loss,
    pair_scores,
    ralsgan_discriminator_loss,
    ralsgan_generator_loss,
    ssim_loss,
    total_generator_loss,
)

torch.set_num_threads(1)


def _t(values: list[float], shape: tuple[int, ...]) -> Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


def _flat(x: Tensor) -> Tensor:
    return x.flatten(1)


# --- weights ---------------------------------------------------------------------------


def test_default_weights_are_the_official_ones() -> None:
    w = LossWeights()
    assert (w.l1, w.audio_face, w.identity_embedding, w.gan) == (1.0, 0.01, 0.001, 0.002)
    assert w.identity_consistency == 1.0
    assert (w.hole, w.valid) == (1.0, 1.0)


def test_negative_or_nan_weight_raises() -> None:
    with pytest.raises(ValueError, match="gan"):
        LossWeights(gan=-0.1)
    with pytest.raises(ValueError, match="hole"):
        LossWeights(hole=float("nan"))


# --- L1 --------------------------------------------------------------------------------


def test_plain_l1() -> None:
    pred = _t([1.0, -1.0, 0.5, 0.0], (1, 1, 2, 2))
    target = _t([0.0, 0.0, 0.0, 2.0], (1, 1, 2, 2))
    # |1| + |-1| + |0.5| + |-2| = 4.5 over 4 elements
    assert float(l1_loss(pred, target)) == pytest.approx(1.125)


def test_l1_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="differ"):
        l1_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4))


def test_masked_l1_separate_weights() -> None:
    pred = _t([1.0, 2.0, 3.0, 4.0], (1, 1, 2, 2))
    target = torch.zeros(1, 1, 2, 2)
    mask = _t([1.0, 0.0, 0.0, 0.0], (1, 1, 2, 2))  # top-left pixel is the hole
    # hole 6 * 1 + valid 1 * (2 + 3 + 4) = 15, over all 4 pixels
    loss = masked_l1_loss(pred, target, mask, hole_weight=6.0, valid_weight=1.0)
    assert float(loss) == pytest.approx(3.75)


def test_masked_l1_empty_hole_mask_is_the_weighted_valid_mean() -> None:
    pred = _t([1.0, 2.0, 3.0, 4.0], (1, 1, 2, 2))
    target = torch.zeros(1, 1, 2, 2)
    mask = torch.zeros(1, 1, 2, 2)
    # 2 * (1 + 2 + 3 + 4) / 4; the hole weight plays no part
    loss = masked_l1_loss(pred, target, mask, hole_weight=100.0, valid_weight=2.0)
    assert float(loss) == pytest.approx(5.0)


def test_masked_l1_all_hole_mask_is_the_weighted_hole_mean() -> None:
    pred = _t([1.0, 2.0, 3.0, 4.0], (1, 1, 2, 2))
    target = torch.zeros(1, 1, 2, 2)
    mask = torch.ones(1, 1, 2, 2)
    # 6 * (1 + 2 + 3 + 4) / 4; the valid weight plays no part
    loss = masked_l1_loss(pred, target, mask, hole_weight=6.0, valid_weight=100.0)
    assert float(loss) == pytest.approx(15.0)


def test_masked_l1_batch_and_channel_broadcast() -> None:
    # Sample 0: error 1 everywhere, all hole. Sample 1: error 2 everywhere, no hole.
    pred = torch.cat([torch.ones(1, 2, 3, 3), 2.0 * torch.ones(1, 2, 3, 3)])
    target = torch.zeros(2, 2, 3, 3)
    mask = torch.cat([torch.ones(1, 1, 3, 3), torch.zeros(1, 1, 3, 3)])
    # (3 * 1 * 18 + 0.5 * 2 * 18) / 36 = (54 + 18) / 36 = 2.0
    loss = masked_l1_loss(pred, target, mask, hole_weight=3.0, valid_weight=0.5)
    assert float(loss) == pytest.approx(2.0)
    # A per-channel mask gives the same number.
    loss_c = masked_l1_loss(
        pred, target, mask.expand(2, 2, 3, 3), hole_weight=3.0, valid_weight=0.5
    )
    assert float(loss_c) == pytest.approx(2.0)


def test_masked_l1_with_unit_weights_is_the_official_loss_on_a_composite() -> None:
    # One hole pixel with error 0.8 and exact known pixels (a composited output):
    # the official nn.L1Loss gives 0.8 / 4 = 0.2, i.e. the hole L1 times the hole fraction.
    pred = _t([0.8, 0.5, -0.5, 0.25], (1, 1, 2, 2))
    target = _t([0.0, 0.5, -0.5, 0.25], (1, 1, 2, 2))
    mask = _t([1.0, 0.0, 0.0, 0.0], (1, 1, 2, 2))
    assert float(masked_l1_loss(pred, target, mask)) == pytest.approx(0.2)
    assert float(l1_loss(pred, target)) == pytest.approx(0.2)


def test_masked_l1_soft_mask_blends_the_weights() -> None:
    pred = _t([2.0], (1, 1, 1, 1))
    target = torch.zeros(1, 1, 1, 1)
    mask = _t([0.25], (1, 1, 1, 1))
    # weight 0.25 * 4 + 0.75 * 1 = 1.75; error 2 -> 3.5
    loss = masked_l1_loss(pred, target, mask, hole_weight=4.0, valid_weight=1.0)
    assert float(loss) == pytest.approx(3.5)


def test_masked_l1_bool_mask() -> None:
    pred = _t([1.0, 2.0, 3.0, 4.0], (1, 1, 2, 2))
    mask = torch.tensor([True, False, False, False]).reshape(1, 1, 2, 2)
    loss = masked_l1_loss(pred, torch.zeros(1, 1, 2, 2), mask, hole_weight=6.0)
    assert float(loss) == pytest.approx(3.75)


@pytest.mark.parametrize(
    "mask_shape",
    [(1, 1, 2, 3), (2, 1, 2, 2), (1, 2, 2, 2), (1, 2, 2), (1, 1, 1, 2, 2)],
)
def test_masked_l1_bad_mask_shape_raises(mask_shape: tuple[int, ...]) -> None:
    pred = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="mask"):
        masked_l1_loss(pred, pred, torch.zeros(mask_shape))


def test_masked_l1_image_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="differ"):
        masked_l1_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 3), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="B, C, H, W"):
        masked_l1_loss(torch.zeros(3, 2, 2), torch.zeros(3, 2, 2), torch.zeros(1, 2, 2))


def test_masked_l1_gradient_is_weight_over_numel() -> None:
    pred = _t([1.0, -1.0, 1.0, -1.0], (1, 1, 2, 2)).requires_grad_(True)
    mask = _t([1.0, 1.0, 0.0, 0.0], (1, 1, 2, 2))
    loss = masked_l1_loss(pred, torch.zeros(1, 1, 2, 2), mask, hole_weight=4.0, valid_weight=2.0)
    torch.autograd.backward(loss)
    # d/dpred of w * |pred| / 4 = w * sign(pred) / 4: hole 4/4 = 1, valid 2/4 = 0.5
    assert pred.grad is not None
    torch.testing.assert_close(pred.grad, _t([1.0, -1.0, 0.5, -0.5], (1, 1, 2, 2)))


# --- audio face and identity embedding -------------------------------------------------


def test_audio_face_loss_over_the_whole_image() -> None:
    audio_face = _t([3.0, -2.0, 0.0, 1.5, 0.5, -1.0], (1, 3, 1, 2))  # unbounded values
    target = _t([1.0, -1.0, 0.0, 1.0, 1.0, -1.0], (1, 3, 1, 2))
    # |2| + |-1| + 0 + |0.5| + |-0.5| + 0 = 4 over 6
    assert float(audio_face_loss(audio_face, target)) == pytest.approx(4.0 / 6.0)


def test_audio_face_loss_resolution_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="audio_face"):
        audio_face_loss(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 256, 256))


def test_identity_embedding_loss_is_l1() -> None:
    pred = _t([1.0, 2.0, 3.0], (1, 3))
    target = _t([0.0, 2.0, 5.0], (1, 3))
    # (1 + 0 + 2) / 3
    assert float(identity_embedding_loss(pred, target)) == pytest.approx(1.0)


def test_identity_embedding_loss_batch() -> None:
    pred = _t([1.0, 2.0, 3.0, 0.0, 0.0, 0.0], (2, 3))
    target = _t([0.0, 2.0, 5.0, 3.0, 3.0, 3.0], (2, 3))
    # (1 + 0 + 2 + 3 + 3 + 3) / 6
    assert float(identity_embedding_loss(pred, target)) == pytest.approx(2.0)


def test_identity_embedding_loss_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="differ"):
        identity_embedding_loss(torch.zeros(2, 128), torch.zeros(2, 2048))
    with pytest.raises(ValueError, match="B, D"):
        identity_embedding_loss(torch.zeros(2, 128, 1, 1), torch.zeros(2, 128, 1, 1))


# --- identity consistency --------------------------------------------------------------


def test_cosine_distance_hand_values() -> None:
    a = _t([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 2.0, 0.0], (4, 2))
    b = _t([0.0, 1.0, 1.0, 1.0, -3.0, 0.0, 5.0, 0.0], (4, 2))
    # orthogonal 1; 45 degrees 1 - 1/sqrt(2); opposite 2; same direction (scale ignored) 0
    expected = torch.tensor([1.0, 1.0 - 1.0 / math.sqrt(2.0), 2.0, 0.0])
    torch.testing.assert_close(cosine_distance(a, b), expected)


def test_cosine_distance_of_a_zero_embedding_is_one_not_nan() -> None:
    d = cosine_distance(torch.zeros(1, 3), torch.ones(1, 3))
    assert float(d) == pytest.approx(1.0)


def test_identity_consistency_hand_values_and_batch_mean() -> None:
    x_f = _t([1.0, 0.0, 3.0, 4.0], (2, 2, 1, 1))
    x_a = _t([1.0, 1.0, -3.0, -4.0], (2, 2, 1, 1))
    # sample 0: 1 - 1/sqrt(2); sample 1: opposite, 2; mean of the two
    expected = (1.0 - 1.0 / math.sqrt(2.0) + 2.0) / 2.0
    assert float(identity_consistency_loss(_flat, x_f, x_a)) == pytest.approx(expected)


def test_identity_consistency_gradients_reach_both_images_with_hand_values() -> None:
    x_f = _t([1.0, 0.0], (1, 2, 1, 1)).requires_grad_(True)
    x_a = _t([0.0, 1.0], (1, 2, 1, 1)).requires_grad_(True)
    torch.autograd.backward(identity_consistency_loss(_flat, x_f, x_a))
    # d(1 - a.b / (|a||b|))/da = -(b / (|a||b|) - (a.b) a / (|a|^3 |b|)); a.b = 0, |a|=|b|=1
    # so grad_a = -b = (0, -1) and, symmetrically, grad_b = -a = (-1, 0).
    assert x_f.grad is not None and x_a.grad is not None
    torch.testing.assert_close(x_f.grad, _t([0.0, -1.0], (1, 2, 1, 1)))
    torch.testing.assert_close(x_a.grad, _t([-1.0, 0.0], (1, 2, 1, 1)))


class _ToyGenerator(torch.nn.Module):
    """A masked image and a speaker code in, (x_f, x_a) out, like the real generator."""

    def __init__(self) -> None:
        super().__init__()
        self.face = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.audio = torch.nn.Linear(4, 3 * 8 * 8)

    def forward(self, masked: Tensor, mask: Tensor, speaker: Tensor) -> tuple[Tensor, Tensor]:
        raw = torch.tanh(self.face(masked))
        x_f = masked * (1.0 - mask) + raw * mask
        x_a = self.audio(speaker).reshape(-1, 3, 8, 8)
        return x_f, x_a


def test_identity_consistency_trains_the_generator_through_a_frozen_psi() -> None:
    torch.manual_seed(0)
    generator = _ToyGenerator()
    psi = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    psi.requires_grad_(False)  # psi is a fixed identity network
    image = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 2:6] = 1.0
    x_f, x_a = generator(image * (1 - mask), mask, torch.randn(2, 4))
    x_f.retain_grad()
    x_a.retain_grad()
    loss = identity_consistency_loss(psi, x_f, x_a)
    assert loss.requires_grad
    torch.autograd.backward(loss)
    assert x_f.grad is not None and x_f.grad.abs().sum() > 0
    assert x_a.grad is not None and x_a.grad.abs().sum() > 0
    for name, p in generator.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in psi.parameters())


def test_identity_consistency_checks_shapes() -> None:
    with pytest.raises(ValueError, match="differ"):
        identity_consistency_loss(_flat, torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 8, 8))

    def collapse(x: Tensor) -> Tensor:
        return x.reshape(1, -1)

    with pytest.raises(ValueError, match="psi returned"):
        identity_consistency_loss(collapse, torch.ones(2, 3, 4, 4), torch.ones(2, 3, 4, 4))


# --- GAN -------------------------------------------------------------------------------


def test_ralsgan_hand_values() -> None:
    scores = PairScores(
        real_first=_t([1.0, 3.0], (2, 1, 1, 1)),  # mean 2
        fake_first=_t([0.0, 2.0], (2, 1, 1, 1)),  # mean 1
    )
    # G: r - mean(f) + 1 = r = (1, 3) -> mean(1, 9) = 5;
    #    f - mean(r) - 1 = f - 3 = (-3, -1) -> mean(9, 1) = 5;  (5 + 5) / 2 = 5
    assert float(ralsgan_generator_loss(scores)) == pytest.approx(5.0)
    # D: r - 1 - 1 = (-1, 1) -> 1;  f - 2 + 1 = (-1, 1) -> 1;  (1 + 1) / 2 = 1
    assert float(ralsgan_discriminator_loss(scores)) == pytest.approx(1.0)


def test_ralsgan_at_the_discriminator_optimum() -> None:
    scores = PairScores(
        real_first=torch.full((1, 1, 2, 2), 0.5), fake_first=torch.full((1, 1, 2, 2), -0.5)
    )
    # D: 0.5 + 0.5 - 1 = 0 and -0.5 - 0.5 + 1 = 0 -> 0
    assert float(ralsgan_discriminator_loss(scores)) == pytest.approx(0.0)
    # G: (0.5 + 0.5 + 1)^2 = 4 and (-0.5 - 0.5 - 1)^2 = 4 -> 4
    assert float(ralsgan_generator_loss(scores)) == pytest.approx(4.0)


def test_ralsgan_mean_is_over_batch_and_patches() -> None:
    # Means over everything: mean(f) = (0 + 0 + 0 + 4) / 4 = 1, mean(r) = 0.
    scores = PairScores(
        real_first=torch.zeros(2, 1, 1, 2), fake_first=_t([0, 0, 0, 4], (2, 1, 1, 2))
    )
    # G: (0 - 1 + 1)^2 = 0 everywhere; (f - 0 - 1)^2 = (1, 1, 1, 9) -> 3; (0 + 3) / 2
    assert float(ralsgan_generator_loss(scores)) == pytest.approx(1.5)
    # D: (0 - 1 - 1)^2 = 4; (f + 1)^2 = (1, 1, 1, 25) -> 7; (4 + 7) / 2
    assert float(ralsgan_discriminator_loss(scores)) == pytest.approx(5.5)


def test_ralsgan_shape_mismatch_raises() -> None:
    scores = PairScores(real_first=torch.zeros(1, 1, 30, 30), fake_first=torch.zeros(1, 1, 14, 14))
    with pytest.raises(ValueError, match="differ"):
        ralsgan_generator_loss(scores)


def test_pair_scores_calls_both_orders() -> None:
    calls: list[tuple[float, float]] = []

    def disc(first: Tensor, second: Tensor) -> Tensor:
        calls.append((float(first.sum()), float(second.sum())))
        return (first - second).mean().reshape(1, 1, 1, 1)

    fake = torch.ones(1, 3, 2, 2)
    real = torch.zeros(1, 3, 2, 2)
    scores = pair_scores(disc, fake, real)
    assert calls == [(0.0, 12.0), (12.0, 0.0)]  # D(real, fake) then D(fake, real)
    assert float(scores.real_first) == -1.0 and float(scores.fake_first) == 1.0
    with pytest.raises(ValueError, match="differ"):
        pair_scores(disc, fake, torch.zeros(1, 3, 4, 4))


def test_generator_gan_loss_reaches_the_fake_through_both_orders() -> None:
    def disc(first: Tensor, second: Tensor) -> Tensor:
        return (2.0 * first + second).reshape(1, 1, 1, 1)

    fake = torch.tensor([[[[0.0]]]], requires_grad=True)
    real = torch.tensor([[[[1.0]]]])
    torch.autograd.backward(ralsgan_generator_loss(pair_scores(disc, fake, real)))
    # r = D(real, fake) = 2 + f and F = D(fake, real) = 2f + 1; one element, so means are
    # the values. r - F + 1 = 2 - f and F - r - 1 = f - 2, so L = ((2 - f)^2 + (f - 2)^2) / 2
    # = (2 - f)^2 and dL/df = -2 (2 - f) = -4 at f = 0: both orders carry gradient to f.
    assert fake.grad is not None
    assert float(fake.grad) == pytest.approx(-4.0)


# --- total -----------------------------------------------------------------------------


class _Batch(TypedDict):
    output: Tensor
    audio_face: Tensor
    target: Tensor
    mask: Tensor
    identity_pred: Tensor
    identity_target: Tensor


def _tiny_batch() -> _Batch:
    target = torch.zeros(1, 1, 2, 2)
    return {
        # hole (top-left) error 0.8, known pixels exact: L1 = 0.8 / 4 = 0.2
        "output": _t([0.8, 0.0, 0.0, 0.0], (1, 1, 2, 2)),
        # audio face error 1 everywhere: L1 = 1
        "audio_face": torch.ones(1, 1, 2, 2),
        "target": target,
        "mask": _t([1.0, 0.0, 0.0, 0.0], (1, 1, 2, 2)),
        # (1 + 0 + 2) / 3 = 1
        "identity_pred": _t([1.0, 2.0, 3.0], (1, 3)),
        "identity_target": _t([0.0, 2.0, 5.0], (1, 3)),
    }


def _scores_with_g_loss_5() -> PairScores:
    return PairScores(
        real_first=_t([1.0, 3.0], (2, 1, 1, 1)), fake_first=_t([0.0, 2.0], (2, 1, 1, 1))
    )


def test_total_with_official_weights_and_no_psi() -> None:
    parts = total_generator_loss(**_tiny_batch(), scores=_scores_with_g_loss_5(), psi=None)
    assert isinstance(parts, GeneratorLosses)
    assert float(parts.l1) == pytest.approx(0.2)
    assert float(parts.audio_face) == pytest.approx(1.0)
    assert float(parts.identity_embedding) == pytest.approx(1.0)
    assert float(parts.identity_consistency) == 0.0
    assert float(parts.gan) == pytest.approx(5.0)
    # official: L_rec + 0.002 L_G + 0.001 L_idc = (0.2 + 0.01 * 1) + 0.002 * 5 + 0.001 * 1
    assert float(parts.total) == pytest.approx(0.2 + 0.01 + 0.01 + 0.001)


def test_total_with_psi_and_custom_weights() -> None:
    batch = _tiny_batch()
    # psi = flatten: x_f = (0.8, 0, 0, 0), x_a = (1, 1, 1, 1): cos = 0.8 / (0.8 * 2) = 0.5
    weights = LossWeights(
        l1=2.0,
        audio_face=0.5,
        identity_embedding=0.25,
        identity_consistency=3.0,
        gan=0.1,
        hole=6.0,
        valid=1.0,
    )
    parts = total_generator_loss(
        **batch, scores=_scores_with_g_loss_5(), psi=_flat, weights=weights
    )
    # masked L1 with hole weight 6: 6 * 0.8 / 4 = 1.2
    assert float(parts.l1) == pytest.approx(1.2)
    assert float(parts.identity_consistency) == pytest.approx(0.5)
    # 2 * 1.2 + 0.5 * 1 + 0.25 * 1 + 3 * 0.5 + 0.1 * 5 = 2.4 + 0.5 + 0.25 + 1.5 + 0.5
    assert float(parts.total) == pytest.approx(5.15)


def test_total_backpropagates_every_part_into_the_generator() -> None:
    torch.manual_seed(0)
    generator = _ToyGenerator()
    psi = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    psi.requires_grad_(False)
    head = torch.nn.Linear(3 * 8 * 8, 5)
    image = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 2:6] = 1.0
    x_f, x_a = generator(image * (1 - mask), mask, torch.randn(2, 4))

    def disc(first: Tensor, second: Tensor) -> Tensor:
        return (first - 0.5 * second).mean(dim=1, keepdim=True)

    parts = total_generator_loss(
        output=x_f,
        audio_face=x_a,
        target=image,
        mask=mask,
        identity_pred=head(x_f.flatten(1)),
        identity_target=torch.randn(2, 5),
        scores=pair_scores(disc, x_f, image),
        psi=psi,
    )
    assert all(torch.isfinite(p) and p.ndim == 0 for p in parts)
    torch.autograd.backward(parts.total)
    for name, p in generator.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_discriminator_step_on_a_detached_fake_leaves_the_generator_alone() -> None:
    torch.manual_seed(0)
    generator = torch.nn.Conv2d(3, 3, 1)
    disc = torch.nn.Conv2d(6, 1, 1)

    def score(first: Tensor, second: Tensor) -> Tensor:
        out: Tensor = disc(torch.cat([first, second], dim=1))
        return out

    real = torch.randn(2, 3, 4, 4)
    fake = generator(real)
    torch.autograd.backward(ralsgan_discriminator_loss(pair_scores(score, fake.detach(), real)))
    assert all(p.grad is None for p in generator.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())


# --- SSIM and identity against the target (ours) -------------------------------------------


def test_ssim_loss_is_one_minus_the_reported_metric() -> None:
    from training.metrics import ssim

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    b = np.clip(a.astype(np.int16) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)

    def tensor(image: np.ndarray) -> Tensor:
        return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1.0

    assert float(ssim_loss(tensor(a), tensor(b))) == pytest.approx(1.0 - ssim(a, b), abs=1e-5)
    assert float(ssim_loss(tensor(a), tensor(a))) == pytest.approx(0.0, abs=1e-6)


def test_ssim_loss_has_gradients_and_checks_shapes() -> None:
    torch.manual_seed(0)
    pred = torch.rand(2, 3, 9, 9, requires_grad=True)
    ssim_loss(pred, torch.rand(2, 3, 9, 9)).backward()
    assert pred.grad is not None and float(pred.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="at least 7 px"):
        ssim_loss(torch.zeros(1, 3, 6, 9), torch.zeros(1, 3, 6, 9))
    with pytest.raises(ValueError, match="differ"):
        ssim_loss(torch.zeros(1, 3, 9, 9), torch.zeros(1, 3, 8, 9))


def test_total_with_identity_target_and_without_scores() -> None:
    batch = _tiny_batch()
    batch["target"] = _t([0.0, 0.6, 0.0, 0.0], (1, 1, 2, 2))
    weights = LossWeights(identity_consistency=0.0, identity_target=2.0, gan=7.0)
    parts = total_generator_loss(**batch, scores=None, psi=_flat, weights=weights)
    # psi = flatten: x_f = (0.8, 0, 0, 0) is orthogonal to x = (0, 0.6, 0, 0): distance 1
    assert float(parts.identity_target) == pytest.approx(1.0)
    assert float(parts.identity_consistency) == 0.0  # weight 0: not computed
    assert float(parts.gan) == 0.0  # no scores: no adversarial term whatever its weight
    # L1: |0.8| + |0.6| over 4 = 0.35; 0.35 + 0.01 * audio L1 + 0.001 * 1 + 2 * 1
    audio = float(parts.audio_face)
    assert float(parts.total) == pytest.approx(0.35 + 0.01 * audio + 0.001 + 2.0)


def test_feature_matching_is_relative_per_layer_and_averaged() -> None:
    target = [torch.full((1, 2, 2, 2), 2.0), torch.full((1, 1, 4, 4), -10.0)]
    # layer 1 off by 1 everywhere (|t| = 2: 0.5), layer 2 exact: mean 0.25
    features = [torch.full((1, 2, 2, 2), 3.0, requires_grad=True), target[1].clone()]
    loss = feature_matching_loss(features, target)
    assert float(loss.detach()) == pytest.approx(0.25, rel=1e-5)
    loss.backward()
    assert features[0].grad is not None and float(features[0].grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="feature maps"):
        feature_matching_loss(features[:1], target)
    with pytest.raises(ValueError):
        feature_matching_loss([torch.zeros(1, 2, 2, 2)], [torch.zeros(1, 2, 3, 3)])


def _flat_with_features(x: Tensor) -> tuple[Tensor, list[Tensor]]:
    return _flat(x), [x * 2.0]


def test_total_with_psi_features_gives_target_and_feature_terms() -> None:
    batch = _tiny_batch()
    batch["target"] = _t([0.0, 0.6, 0.0, 0.0], (1, 1, 2, 2))
    weights = LossWeights(identity_consistency=0.0, identity_target=2.0, identity_features=3.0)
    parts = total_generator_loss(
        **batch, scores=None, psi=None, weights=weights, psi_features=_flat_with_features
    )
    assert float(parts.identity_target) == pytest.approx(1.0)  # orthogonal, as above
    # features 2x: |1.6 - 0| + |0 - 1.2| over 4 = 0.7, relative to mean |t| = 0.3
    assert float(parts.identity_features) == pytest.approx(0.7 / 0.3, rel=1e-5)
    audio = float(parts.audio_face)
    expected = 0.35 + 0.01 * audio + 0.001 + 2.0 + 3.0 * 0.7 / 0.3
    assert float(parts.total) == pytest.approx(expected, rel=1e-5)
    without = total_generator_loss(**batch, scores=None, psi=None, weights=weights)
    assert float(without.identity_features) == 0.0 and float(without.identity_target) == 0.0
