"""PatchDiscriminator: official shapes, parameter count, state-dict names, config options."""

from __future__ import annotations

import pytest
import torch

from avinpaint.discriminator import DiscriminatorConfig, PatchDiscriminator, patch_grid_size

torch.set_num_threads(1)


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_official_width_gives_a_30x30_patch_map_for_a_256_pair() -> None:
    torch.manual_seed(0)
    d = PatchDiscriminator()
    fake, real = torch.randn(2, 2, 3, 256, 256).unbind(0)
    with torch.no_grad():
        out = d(fake, real)
    assert out.shape == (2, 1, 30, 30)
    assert patch_grid_size(256) == 30


def test_official_parameter_count() -> None:
    # Hand count, conv weights 4x4 + bias: 6*64*16+64 = 6208; 64*128*16+128 = 131200;
    # 128*256*16+256 = 524544; 256*512*16+512 = 2097664; 512*1*16+1 = 8193.
    expected = 6208 + 131200 + 524544 + 2097664 + 8193
    assert expected == 2_767_809  # ARCHITECTURE.md section 11
    assert _n_params(PatchDiscriminator()) == expected


def test_narrow_width_parameter_count() -> None:
    # base_width 16: 6*16*16+16 = 1552; 16*32*16+32 = 8224; 32*64*16+64 = 32832;
    # 64*128*16+128 = 131200; 128*16+1 = 2049.
    d = PatchDiscriminator(DiscriminatorConfig(base_width=16))
    assert _n_params(d) == 1552 + 8224 + 32832 + 131200 + 2049


def test_state_dict_keys_are_the_official_ones() -> None:
    keys = list(PatchDiscriminator().state_dict())
    # Official nn.Sequential indices: convs at 0, 2, 5, 8, 11; non-affine IN has no entries.
    assert keys == [f"discriminator.{i}.{p}" for i in (0, 2, 5, 8, 11) for p in ("weight", "bias")]


def test_instance_norms_are_non_affine_and_stateless() -> None:
    norms = [m for m in PatchDiscriminator().modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert len(norms) == 3
    assert all(not n.affine and not n.track_running_stats for n in norms)


@pytest.mark.parametrize(("size", "grid"), [(256, 30), (128, 14), (64, 6)])
def test_patch_grid_size_matches_the_network(size: int, grid: int) -> None:
    # 256: 128, 64, 32, then 31, 30.  128: 64, 32, 16, 15, 14.  64: 32, 16, 8, 7, 6.
    d = PatchDiscriminator(DiscriminatorConfig(base_width=4))
    x = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        assert d(x, x).shape == (1, 1, grid, grid)
    assert patch_grid_size(size) == grid


def test_pair_order_matters() -> None:
    torch.manual_seed(1)
    d = PatchDiscriminator(DiscriminatorConfig(base_width=8))
    a, b = torch.randn(2, 1, 3, 64, 64).unbind(0)
    with torch.no_grad():
        assert not torch.allclose(d(a, b), d(b, a))


def test_extra_channels_for_a_mask_conditioned_pair() -> None:
    d = PatchDiscriminator(DiscriminatorConfig(in_channels=7, base_width=8))
    image = torch.zeros(1, 3, 64, 64)
    with_mask = torch.zeros(1, 4, 64, 64)
    with torch.no_grad():
        assert d(with_mask, image).shape == (1, 1, 6, 6)


def test_mismatched_inputs_raise() -> None:
    d = PatchDiscriminator(DiscriminatorConfig(base_width=4))
    x = torch.zeros(1, 3, 64, 64)
    with pytest.raises(ValueError, match="channels"):
        d(x, torch.zeros(1, 4, 64, 64))
    with pytest.raises(ValueError, match="share"):
        d(x, torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="share"):
        d(x, torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="NCHW"):
        d(x[0], x[0])


def test_invalid_config_raises() -> None:
    with pytest.raises(ValueError):
        DiscriminatorConfig(base_width=0)
    with pytest.raises(ValueError):
        DiscriminatorConfig(in_channels=0)
    with pytest.raises(ValueError):
        patch_grid_size(8)


def test_spectral_norm_flag_bounds_every_conv() -> None:
    torch.manual_seed(2)
    d = PatchDiscriminator(DiscriminatorConfig(base_width=8, spectral_norm=True))
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5
    assert all(torch.nn.utils.parametrize.is_parametrized(c, "weight") for c in convs)
    x = torch.randn(2, 3, 64, 64)
    d.train()
    for _ in range(30):  # power iterations run on each training-mode forward
        with torch.no_grad():
            d(x, x)
    d.eval()
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert float(sigma) == pytest.approx(1.0, abs=0.05)
    # Same trainable size as without spectral norm (the u, v vectors are buffers).
    assert _n_params(d) == _n_params(PatchDiscriminator(DiscriminatorConfig(base_width=8)))


def test_gradients_reach_both_inputs() -> None:
    d = PatchDiscriminator(DiscriminatorConfig(base_width=4))
    a = torch.randn(1, 3, 64, 64, requires_grad=True)
    b = torch.randn(1, 3, 64, 64, requires_grad=True)
    torch.autograd.backward(d(a, b).sum())
    assert a.grad is not None and b.grad is not None
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
