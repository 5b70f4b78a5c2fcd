"""Training losses of the AudioFace generator and discriminator, as pure functions.

What the official ``train.py`` computes per iteration (ARCHITECTURE.md section 9), with
``x`` the ground truth in [-1, 1], ``x_f`` the composited output, ``x_a`` the audio face:

    L_rec = L1(x_f, x) + 0.01 * L1(x_a, x)           # nn.L1Loss: mean over every element
    L_G   = RaLSGAN generator loss on D(x_f, x), D(x, x_f)
    L_idc = L1(I_c, target identity feature)         # the MLP head's 2048-d code
    L_vgg = mean |R(x_f) - R(x_a)|                    # under no_grad: NO gradient, no effect
    L     = L_rec + 0.002 * L_G + 0.001 * L_idc + 1 * L_vgg

Where ours deliberately differs:
- the identity-consistency term has gradients (``identity_consistency_loss``) and is a cosine
  distance between embeddings of any identity network ``psi`` (SFace for us);
- the output L1 can weight hole and valid pixels differently (``masked_l1_loss``); with both
  weights 1 it is exactly the official plain L1;
- nothing here reproduces the official update quirk (its D loss also back-propagates into G
  because the fake is not detached): the caller detaches the fake for the D step.

Masks are 1 = hole, 0 = known, shaped (B, 1, H, W) or like the image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

Embedder = Callable[[Tensor], Tensor]
"""An identity network psi: images (B, 3, H, W) -> embeddings (B, ...)."""

FeatureEmbedder = Callable[[Tensor], tuple[Tensor, list[Tensor]]]
"""An identity network psi that also returns intermediate activations: images -> (embeddings,
feature maps), e.g. ``avinpaint.identity.SFace.features_crop256``."""

PairDiscriminator = Callable[[Tensor, Tensor], Tensor]
"""A discriminator scoring an image pair, e.g. ``avinpaint.discriminator.PatchDiscriminator``."""


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator objective. Defaults are the official ``train.py`` values.

    Attributes:
        l1: output reconstruction L1 (train.py: ``1*recon_loss``).
        audio_face: audio face vs ground truth L1 (train.py: ``0.01*l1(audioOut, img)``
            inside ``recon_loss``).
        identity_embedding: predicted identity code vs target feature
            (train.py: ``0.001*face_id_loss``).
        identity_consistency: psi(x_f) vs psi(x_a) (train.py adds ``faceidloss`` with weight
            1, but computes it under no_grad, so its effective weight there is 0; the paper
            PDF was not available to check. Ours is a cosine distance in [0, 2], not the
            official L1 of ResNet feature maps, so retune this when training for real).
        gan: relativistic LSGAN generator term (train.py: ``0.002*gan_loss``).
        hole: per-pixel weight of hole pixels in the output L1 (ours; 1 = official).
        valid: per-pixel weight of known pixels in the output L1 (ours; 1 = official).
        ssim: ``1 - SSIM(x_f, x)`` (ours; 0 = official). L1 alone rewards the blurry mean
            fill and tolerates the decoder's faint checkerboard; SSIM penalises both.
        identity_target: ``1 - cos(psi(x_f), psi(x))``, the output's identity against the
            ground truth's (ours; 0 = official, whose identity terms never compare with x).
        identity_features: feature matching in psi: the mean over psi's tapped layers of
            ``|f(x_f) - f(x)|`` relative to ``|f(x)|`` (ours; 0 = official). A perceptual
            loss from the identity network itself: it asks the fill for the texture and face
            parts psi reads, where the final embedding alone is satisfied by any face that
            happens to land near the person.
    """

    l1: float = 1.0
    audio_face: float = 0.01
    identity_embedding: float = 0.001
    identity_consistency: float = 1.0
    gan: float = 0.002
    hole: float = 1.0
    valid: float = 1.0
    ssim: float = 0.0
    identity_target: float = 0.0
    identity_features: float = 0.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value >= 0.0:  # also rejects NaN
                raise ValueError(f"loss weight {name} must be >= 0, got {value}")


class GeneratorLosses(NamedTuple):
    """Each UNWEIGHTED part of the generator objective, and the weighted ``total``."""

    l1: Tensor
    audio_face: Tensor
    identity_embedding: Tensor
    identity_consistency: Tensor
    gan: Tensor
    ssim: Tensor
    identity_target: Tensor
    identity_features: Tensor
    total: Tensor


class PairScores(NamedTuple):
    """Discriminator scores of one (fake, real) pair in both orders, as the official
    ``calc_gan_loss`` makes them: ``real_first = D(real, fake)`` (its ``y_pred``) and
    ``fake_first = D(fake, real)`` (its ``y_pred_fake``)."""

    real_first: Tensor
    fake_first: Tensor


def _require_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    # Broadcasting would silently average the wrong pairs (nn.L1Loss only warns).
    if a.shape != b.shape:
        raise ValueError(f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} differ")


def l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over every element (``nn.L1Loss()``, what the official code uses)."""
    _require_same_shape("pred", pred, "target", target)
    return (pred - target).abs().mean()


def masked_l1_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    *,
    hole_weight: float = 1.0,
    valid_weight: float = 1.0,
) -> Tensor:
    """L1 with separate per-pixel weights for hole (mask 1) and valid (mask 0) pixels.

    Normalisation: the weighted absolute errors are averaged over ALL elements (B*C*H*W),
    not over the hole or valid count alone (the LaMa / partial-conv convention). So every
    pixel's gradient is its weight / numel whatever the hole size, an empty or an all-hole
    mask needs no special case, and with both weights 1 this is exactly ``l1_loss``: the
    official loss on the composited output, i.e. the hole L1 times the hole fraction.

    ``pred`` and ``target`` are (B, C, H, W); ``mask`` is (B, 1, H, W) or (B, C, H, W), with
    values in [0, 1] (soft masks blend the two weights).
    """
    _require_same_shape("pred", pred, "target", target)
    if pred.ndim != 4:
        raise ValueError(f"need (B, C, H, W) images, got {tuple(pred.shape)}")
    b, c, h, w = pred.shape
    if (
        mask.ndim != 4
        or mask.shape[0] != b
        or mask.shape[1] not in (1, c)
        or mask.shape[2:] != (h, w)
    ):
        raise ValueError(f"mask {tuple(mask.shape)} does not fit images {tuple(pred.shape)}")
    hole = mask.to(pred.dtype)
    pixel_weights = hole * hole_weight + (1.0 - hole) * valid_weight
    return ((pred - target).abs() * pixel_weights).mean()


SSIM_WINDOW = 7
"""Side of SSIM's uniform window: scikit-image's default, as ``training.metrics.ssim``."""


def ssim_loss(pred: Tensor, target: Tensor) -> Tensor:
    """``1 - mean SSIM`` of (B, C, H, W) images in [-1, 1], differentiable.

    The formula of ``training.metrics.ssim`` (scikit-image defaults: 7x7 uniform window,
    sample covariance, K1 0.01, K2 0.03, data range 1 after mapping to [0, 1], only windows
    inside the image), averaged over every window, channel and sample, so the loss optimises
    the number the evaluation reports.
    """
    _require_same_shape("pred", pred, "target", target)
    if pred.ndim != 4 or min(pred.shape[2:]) < SSIM_WINDOW:
        raise ValueError(
            f"need (B, C, H, W) images of at least {SSIM_WINDOW} px, got {tuple(pred.shape)}"
        )
    x, y = (pred.float() + 1.0) / 2.0, (target.float() + 1.0) / 2.0

    def mean(image: Tensor) -> Tensor:
        return torch.nn.functional.avg_pool2d(image, SSIM_WINDOW, stride=1)

    n = SSIM_WINDOW * SSIM_WINDOW
    cov_norm = n / (n - 1.0)
    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return 1.0 - s.mean()


def audio_face_loss(audio_face: Tensor, target: Tensor) -> Tensor:
    """L1 between the audio face x_a and the ground truth, over the WHOLE image (background
    included) at full crop resolution (256 in the paper), as the official code compares
    them. x_a is unbounded (no tanh), the target is in [-1, 1]."""
    _require_same_shape("audio_face", audio_face, "target", target)
    return l1_loss(audio_face, target)


def identity_embedding_loss(predicted: Tensor, target: Tensor) -> Tensor:
    """L1 (mean over every element) between the predicted identity code I_c (the MLP head's
    output, (B, D)) and the identity feature of the ground truth's person (B, D).

    Official: ``nn.L1Loss`` against a precomputed 2048-d VGGFace2 feature of a random image
    of the same identity; ours uses the same distance on whatever target the dataset gives.
    """
    if predicted.ndim != 2:
        raise ValueError(f"need (B, D) codes, got {tuple(predicted.shape)}")
    _require_same_shape("predicted", predicted, "target", target)
    return l1_loss(predicted, target)


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample ``1 - cos(a, b)`` of (B, ...) embeddings, flattened after the batch axis;
    in [0, 2], shape (B,). A zero embedding has cosine 0 (distance 1) rather than NaN."""
    _require_same_shape("a", a, "b", b)
    if a.ndim < 2:
        raise ValueError(f"need (B, D...) embeddings, got {tuple(a.shape)}")
    return 1.0 - torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


def feature_matching_loss(features: list[Tensor], targets: list[Tensor]) -> Tensor:
    """Mean over layers of ``mean|f - t| / mean|t|``: each layer counts alike whatever the
    scale of its activations. ``targets`` should come without gradient."""
    if len(features) != len(targets) or not features:
        raise ValueError(f"{len(features)} feature maps against {len(targets)} targets")
    parts = []
    for feature, target in zip(features, targets, strict=True):
        _require_same_shape("feature", feature, "target", target)
        parts.append((feature - target).abs().mean() / (target.abs().mean() + 1e-6))
    return torch.stack(parts).mean()


def identity_consistency_loss(psi: Embedder, inpainted: Tensor, audio_face: Tensor) -> Tensor:
    """Mean over the batch of ``1 - cos(psi(x_f), psi(x_a))``, WITH gradients to both images.

    Official: ``mean|R(x_f) - R(x_a)|`` of VGGFace2 ResNet-50 feature maps under no_grad, so
    it never trains anything. Ours back-propagates through psi into both x_f and x_a (freeze
    psi's parameters to keep it fixed; do not wrap this call in ``no_grad``). psi does its
    own preprocessing (e.g. warp to SFace's 112x112 template) and is called once per image
    set, so a psi with batch norm in train mode never mixes the two sets' statistics.
    """
    _require_same_shape("inpainted", inpainted, "audio_face", audio_face)
    emb_f = psi(inpainted)
    emb_a = psi(audio_face)
    if emb_f.shape[0] != inpainted.shape[0]:
        raise ValueError(f"psi returned {tuple(emb_f.shape)} for a batch of {inpainted.shape[0]}")
    return cosine_distance(emb_f, emb_a).mean()


def pair_scores(discriminator: PairDiscriminator, fake: Tensor, real: Tensor) -> PairScores:
    """Score ``(real, fake)`` and ``(fake, real)``: the two calls of the official loss.

    For the generator step pass the fake as is; for the discriminator step pass
    ``fake.detach()`` (the official code does not, so its D loss also trains G).
    """
    _require_same_shape("fake", fake, "real", real)
    return PairScores(real_first=discriminator(real, fake), fake_first=discriminator(fake, real))


def _relativistic_terms(scores: PairScores) -> tuple[Tensor, Tensor]:
    # "Relativistic average": each order's scores relative to the mean (over batch AND
    # patches, as torch.mean in the official code) of the other order's scores.
    _require_same_shape("real_first", scores.real_first, "fake_first", scores.fake_first)
    real_rel = scores.real_first - scores.fake_first.mean()
    fake_rel = scores.fake_first - scores.real_first.mean()
    return real_rel, fake_rel


def ralsgan_generator_loss(scores: PairScores) -> Tensor:
    """Relativistic average LSGAN, generator side (official ``g_loss``):
    ``(mean((r - mean(f) + 1)^2) + mean((f - mean(r) - 1)^2)) / 2`` with
    r = D(real, fake), f = D(fake, real): G wants the pairs' roles swapped."""
    real_rel, fake_rel = _relativistic_terms(scores)
    return ((real_rel + 1.0).square().mean() + (fake_rel - 1.0).square().mean()) / 2.0


def ralsgan_discriminator_loss(scores: PairScores) -> Tensor:
    """Relativistic average LSGAN, discriminator side (official ``d_loss``):
    ``(mean((r - mean(f) - 1)^2) + mean((f - mean(r) + 1)^2)) / 2``; 0 when every
    real-first score is exactly 1 above the fake-first mean and vice versa."""
    real_rel, fake_rel = _relativistic_terms(scores)
    return ((real_rel - 1.0).square().mean() + (fake_rel + 1.0).square().mean()) / 2.0


def total_generator_loss(
    *,
    output: Tensor,
    audio_face: Tensor,
    target: Tensor,
    mask: Tensor,
    identity_pred: Tensor,
    identity_target: Tensor,
    scores: PairScores | None,
    psi: Embedder | None,
    weights: LossWeights | None = None,
    psi_features: FeatureEmbedder | None = None,
) -> GeneratorLosses:
    """The generator objective: the parts and their weighted sum.

    Args:
        output: composited result x_f (B, 3, H, W).
        audio_face: audio face x_a (B, 3, H, W).
        target: ground truth x (B, 3, H, W).
        mask: hole mask, 1 = hole, (B, 1, H, W).
        identity_pred: predicted identity code I_c (B, D).
        identity_target: identity feature of the ground truth's person (B, D).
        scores: ``pair_scores(D, output, target)`` with ``output`` NOT detached; None
            leaves the adversarial term out (0), for runs with ``gan`` weight 0.
        psi: identity network for the consistency and identity-target terms; None leaves
            both out (0), as the official training effectively does.
        weights: defaults to ``LossWeights()`` (the official values).
        psi_features: psi with its feature maps, for the identity-target and
            feature-matching terms from one pass per image; without it ``identity_target``
            uses ``psi`` and ``identity_features`` is left out (0).

    With default weights, ``psi=None`` and the output composited, ``total`` equals the
    official effective objective ``L_rec + 0.002 L_G + 0.001 L_idc``.
    """
    w = weights if weights is not None else LossWeights()
    l1 = masked_l1_loss(output, target, mask, hole_weight=w.hole, valid_weight=w.valid)
    audio = audio_face_loss(audio_face, target)
    identity = identity_embedding_loss(identity_pred, identity_target)
    zero = output.new_zeros(())
    consistency = to_target = features = zero
    if psi is not None and w.identity_consistency > 0:
        consistency = identity_consistency_loss(psi, output, audio_face)
    if psi_features is not None and (w.identity_target > 0 or w.identity_features > 0):
        out_embedding, out_features = psi_features(output)
        with torch.no_grad():
            target_embedding, target_features = psi_features(target)
        to_target = cosine_distance(out_embedding, target_embedding).mean()
        features = feature_matching_loss(out_features, target_features)
    elif psi is not None and w.identity_target > 0:
        to_target = cosine_distance(psi(output), psi(target).detach()).mean()
    gan = ralsgan_generator_loss(scores) if scores is not None else zero
    structure = ssim_loss(output, target) if w.ssim > 0 else zero
    total = (
        w.l1 * l1
        + w.audio_face * audio
        + w.identity_embedding * identity
        + w.identity_consistency * consistency
        + w.gan * gan
        + w.ssim * structure
        + w.identity_target * to_target
        + w.identity_features * features
    )
    return GeneratorLosses(
        l1=l1,
        audio_face=audio,
        identity_embedding=identity,
        identity_consistency=consistency,
        gan=gan,
        ssim=structure,
        identity_target=to_target,
        identity_features=features,
        total=total,
    )
