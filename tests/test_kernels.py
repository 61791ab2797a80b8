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


# ------------------------------------------------------------------------- fused (compiled) blocks
def _eager_block(kind: str, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if kind == "mish_norm":
        return F.layer_norm(mish(x), x.shape[-1:]) * w + b
    return mish(F.layer_norm(x, x.shape[-1:]) * w + b)


@pytest.mark.parametrize("kind", ["mish_norm", "norm_mish"])
@pytest.mark.parametrize(("shape", "affine"), [((3, 40, 160), (3, 1, 160)), ((130, 128), (128,))])
def test_fused_blocks_match_the_eager_ops_in_values_and_gradients(kind, shape, affine):
    g = torch.Generator().manual_seed(0)
    x, grad = 3 * torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    w, b = 1 + torch.randn(affine, generator=g), torch.randn(affine, generator=g)
    out = {}
    for mode in ("fast", "fused"):
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        with use_kernels(mode):
            y = getattr(kernels, kind)(*leaves) if mode == "fused" else _eager_block(kind, *leaves)
        assert y is not None
        y.backward(grad)
        out[mode] = [y.detach(), *(t.grad for t in leaves)]
    for fused, eager in zip(out["fused"], out["fast"]):
        torch.testing.assert_close(fused, eager, rtol=1e-5, atol=2e-5)


def test_fused_blocks_run_only_under_the_fused_kernels_in_float32_on_large_layers():
    x, w, b = torch.randn(128, 128), torch.ones(128), torch.zeros(128)
    for mode in ("exact", "fast"):
        with use_kernels(mode):
            assert kernels.mish_norm(x, w, b) is None and kernels.norm_mish(x, w, b) is None
    with use_kernels("fused"):
        assert kernels.norm_mish(x.bfloat16(), w.bfloat16(), b.bfloat16()) is None
        assert kernels.norm_mish(x[:127], w, b) is None  # 16,256 < MIN_FUSED_NUMEL activations: eager
        assert torch.equal(mish(x), kernels._ExpMish.apply(x))  # a lone Mish runs the fast kernel


def test_fused_blocks_leave_a_compiled_region_to_its_compiler(monkeypatch):
    """Inside torch.compile (--compile) the blocks run their eager ops, for the outer compiler to fuse."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with use_kernels("fused"):
        assert kernels.mish_norm(torch.randn(128, 128), torch.ones(128), torch.zeros(128)) is None


def test_modules_under_fused_kernels_match_the_fast_ones(monkeypatch):
    """World model (NormedLinear, Q ensemble), actor and critic: outputs and parameter gradients."""
    from pwm_core.nn import WorldModel, world_model_config
    from pwm_core.nn.actor_critic import Actor, CriticEnsemble
    from pwm_core.tasks import resolve_tasks

    torch.manual_seed(0)
    model = WorldModel(world_model_config("1M", resolve_tasks("cartpole-balance"))).eval()
    L, A = model.cfg.latent_dim, model.cfg.act_dim
    actor, critic = Actor(L, A), CriticEnsemble(L)
    n = 64  # 64 x 256 activations and up: the layers large enough to fuse (MIN_FUSED_NUMEL)
    obs, task = torch.randn(n, model.cfg.obs_dim), torch.zeros(n, dtype=torch.long)
    eps = torch.randn(n, A)
    fused_calls, fused = [], kernels._fused

    def counted(*args):
        out = fused(*args)
        if out is not None:
            fused_calls.append(args[0])
        return out

    monkeypatch.setattr(kernels, "_fused", counted)
    params = [*model.parameters(), *actor.parameters(), *critic.parameters()]
    out = {}
    for mode in ("fast", "fused"):
        with use_kernels(mode):
            z = model.encode(obs, task)
            a = actor(z, eps=eps)
            ys = [z, a, model.next(z, a, task), model.reward(z, a, task), model.Q(z, a, task, return_type="all")]
            ys.append(critic(z))
        grads = torch.autograd.grad(sum(y.float().square().sum() for y in ys), params, allow_unused=True)
        out[mode] = [y.detach() for y in ys] + [g for g in grads if g is not None]
    assert len(out["fused"]) == len(out["fast"]) > 6
    assert {"mish_norm", "norm_mish"} <= set(fused_calls)
    for fused, fast in zip(out["fused"], out["fast"]):  # float32 rounding, summed over many rows in a gradient
        assert (fused - fast).norm() <= 1e-5 * fast.norm() + 1e-6


def test_a_failed_compile_is_one_warning_and_the_eager_ops_run(monkeypatch, caplog):
    from pwm_core.nn.layers import NormedLinear

    def no_compiler(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler found\ntraceback details")

        return call

    monkeypatch.setattr(torch, "compile", no_compiler)
    monkeypatch.setattr(kernels, "_compiled", {})
    monkeypatch.setattr(kernels, "_compile_failed", False)
    layer, x = NormedLinear(8, 128), torch.randn(128, 8)
    with use_kernels("fast"):
        expected = layer(x)
    with caplog.at_level("WARNING"), use_kernels("fused"):
        assert torch.equal(layer(x), expected) and torch.equal(layer(x), expected)
    (record,) = caplog.records
    assert "torch.compile failed (RuntimeError: no C++ compiler found)" in record.getMessage()
    assert "fast" in record.getMessage()


# ------------------------------------------------------------------------------------------- dropout
def test_exact_dropout_is_atens():
    x = torch.randn(64, 100)
    with use_kernels("exact"):
        torch.manual_seed(3)
        got = kernels.dropout(x, 0.01)
    torch.manual_seed(3)
    assert torch.equal(got, F.dropout(x, 0.01, True))
    with use_kernels("fused"):
        assert kernels.dropout(x, 0.01, training=False) is x and kernels.dropout(x, 0.0) is x


@pytest.mark.parametrize("mode", ["fast", "fused"])
def test_sparse_dropout_is_a_bernoulli_mask_scaled_by_one_over_keep(mode):
    # 4,000 masks of 500 elements at p = 0.2 (seeded, so the test is deterministic): the overall rate within
    # 3 sigma of 0.2 (sigma = sqrt(0.16 / 2e6) = 2.8e-4); each position's rate (sigma 0.0063) within 5 sigma;
    # two neighbours dropped together at p^2 = 0.04 (independence); kept elements scaled by exactly 1 / 0.8
    torch.manual_seed(0)
    with use_kernels(mode):
        y = torch.stack([kernels.dropout(torch.ones(500), 0.2) for _ in range(4000)])
    dropped = (y == 0).double()
    assert abs(dropped.mean().item() - 0.2) < 3 * 2.83e-4
    assert (dropped.mean(0) - 0.2).abs().max().item() < 5 * 0.0063
    assert abs((dropped[:, :-1] * dropped[:, 1:]).mean().item() - 0.04) < 0.002
    assert set(y.unique().tolist()) == {0.0, 1.0 / (1.0 - 0.2)}


def test_sparse_dropout_is_seeded_differentiable_and_takes_any_strides():
    x = torch.randn(3, 64, 200).transpose(0, 1).requires_grad_()  # (64, 3, 200), not contiguous
    with use_kernels("fused"):
        torch.manual_seed(7)
        y = kernels.dropout(x, 0.01)
        torch.manual_seed(7)
        again = kernels.dropout(x, 0.01)
    assert torch.equal(y, again) and y.shape == x.shape
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.99)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(g == 0, ~kept) and torch.allclose(g[kept], torch.full_like(g[kept], 1 / 0.99))
    assert 0 < (~kept).sum().item() < 0.03 * x.numel()  # ~384 of 38,400 expected
