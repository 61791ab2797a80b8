"""The Mish kernels: exact (ATen) vs fast (one exp): same values and gradients within float32 ulps, chosen per block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pwm_core.config import ConfigError
from pwm_core.nn import kernels
from pwm_core.nn.kernels import current_kernels, mish, use_kernels


def _reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mish and its derivative in float64, from tanh(softplus(x))."""
    x64 = x.double().requires_grad_()
    y = x64 * torch.tanh(F.softplus(x64))
    (g,) = torch.autograd.grad(y.sum(), x64)
    return y.detach(), g


def test_fast_mish_hand_values():
    # mish(0) = 0, mish'(0) = tanh(log 2) = 0.6; mish(1) = tanh(log(1 + e)) = 0.865098...
    x = torch.tensor([0.0, 1.0, -1.0, 30.0, -30.0], requires_grad=True)
    with use_kernels("fast"):
        y = mish(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert y[0].item() == 0.0
    assert y[1].item() == pytest.approx(0.8650983882673103, rel=1e-6)
    assert y[2].item() == pytest.approx(-0.30340146137410895, rel=1e-6)
    assert y[3].item() == pytest.approx(30.0, rel=1e-7)  # tanh(softplus(30)) = 1 in float32
    assert abs(y[4].item()) < 1e-11
    assert g[0].item() == pytest.approx(0.6, rel=1e-6)
    assert g[3].item() == pytest.approx(1.0, rel=1e-7)


def test_fast_mish_matches_float64_over_the_whole_range():
    x = torch.linspace(-60, 60, 100_001).requires_grad_()
    with use_kernels("fast"):
        y = mish(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    ref_y, ref_g = _reference(x.detach())
    assert torch.isfinite(y).all() and torch.isfinite(g).all()
    assert (y.double() - ref_y).abs().max() < 6e-6  # ~1.5 ulp at |x| = 60
    assert ((y.double() - ref_y).abs() / ref_y.abs().clamp(min=1e-3)).max() < 1e-5
    assert (g.double() - ref_g).abs().max() < 1e-5


def test_fast_and_exact_agree_on_random_inputs():
    x = torch.randn(64, 384, generator=torch.Generator().manual_seed(0)) * 4
    xr = x.clone().requires_grad_()
    grad = torch.randn_like(x)
    exact = F.mish(xr)
    (g_exact,) = torch.autograd.grad(exact, xr, grad)
    with use_kernels("fast"):
        fast = mish(xr)
    (g_fast,) = torch.autograd.grad(fast, xr, grad)
    torch.testing.assert_close(fast, exact, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_fast, g_exact, rtol=1e-5, atol=1e-5)


def test_exact_is_atens_kernel_and_the_default():
    x = torch.randn(1000)
    assert current_kernels() == "exact"
    assert torch.equal(mish(x), F.mish(x))


def test_use_kernels_restores_and_rejects_unknown_modes():
    with use_kernels("fast"):
        assert current_kernels() == "fast"
        with use_kernels("exact"):
            assert current_kernels() == "exact"
        assert current_kernels() == "fast"
    assert current_kernels() == "exact"
    with pytest.raises(RuntimeError, match="boom"), use_kernels("fast"):
        raise RuntimeError("boom")
    assert current_kernels() == "exact"
    with pytest.raises(ConfigError, match="kernels"), use_kernels("turbo"):
        pass


def test_bf16_inputs_use_atens_kernel():
    x = torch.randn(100).bfloat16()
    with use_kernels("fast"):
        assert torch.equal(mish(x), F.mish(x))


def test_extraction_runs_the_kernel_its_config_names(monkeypatch):
    """kernels=fast reaches every Mish of the update (world model, actor, critic); exact never calls it."""
    from pwm_core.nn import WorldModel, world_model_config
    from pwm_core.tasks import resolve_tasks
    from pwm_core.train.extract import ExtractConfig, Extractor

    calls = []
    apply = kernels._ExpMish.apply
    monkeypatch.setattr(kernels._ExpMish, "apply", lambda x: calls.append(x.shape) or apply(x))
    task_set = resolve_tasks("cartpole-balance")
    model = WorldModel(world_model_config("1M", task_set))
    results = {}
    for mode in ("exact", "fast"):
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        cfg = ExtractConfig(batch_size=4, horizon=3, steps=2, return_states=2, seed=0, kernels=mode)
        ex = Extractor(cfg, model, 0, lambda g=g: torch.randn(4, model.cfg.obs_dim, generator=g))
        n = len(calls)
        results[mode] = ex.step()
        assert (len(calls) > n) == (mode == "fast")
    for key in ("actor_loss", "value_loss"):
        assert results["fast"][key] == pytest.approx(results["exact"][key], rel=1e-4, abs=1e-6)
    assert current_kernels() == "exact"
