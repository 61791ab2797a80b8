"""The pedagogical studies: the ball-wall (Figure 2) and gradient-variance (Figure 3) experiments compute
their tables and figures; their building blocks are checked against direct computations."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import run, run_json

from pwm_core.errors import PwmError
from pwm_core.studies.ball_wall import GROUND_TRUTH, BallWallConfig, plot_ball_wall, run_ball_wall
from pwm_core.studies.ball_wall import table_rows as ball_wall_table
from pwm_core.studies.gradient_variance import (
    TRUE,
    GradientVarianceConfig,
    act,
    gradient_statistics,
    per_sample_parameters,
    plot_gradient_variance,
    policy_prior,
    run_gradient_variance,
)
from pwmctl.commands.study import parse_horizons


def test_ball_wall_quick_run_fills_the_table_and_writes_a_figure(tmp_path):
    results = run_ball_wall(BallWallConfig.quick())
    assert [r["model"] for r in results["rows"]] == [GROUND_TRUTH, "mish-ln-mlp", "relu-mlp", "simnorm-mlp"]
    for r in results["rows"]:
        assert all(math.isfinite(r[k]) for k in ("approx_error", "theta_final", "optimality_gap", "argmin_gap"))
        assert -math.pi <= r["theta_final"] <= math.pi
        assert r["optimality_gap"] >= 0 and r["argmin_gap"] >= 0  # J* is the grid minimum
        assert len(results["paths"][r["model"]]["theta"]) == BallWallConfig.quick().descent_steps + 1
    assert results["rows"][0]["approx_error"] == 0.0
    assert len(ball_wall_table(results)) == 4
    json.dumps(results)
    png = plot_ball_wall(results, tmp_path / "bw.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ball_wall_reproduces_the_official_fits_with_its_decoder_bug():
    """The official script's numbers (docs/algorithm.md#studies-the-ball-thrown-at-a-wall): Mish+LN MLP RMSE 0.707;
    SimNorm 1.131 only because its read-out's gradients are never zeroed."""
    cfg = BallWallConfig(models=("mish-ln-mlp", "simnorm-mlp"), descent_steps=1, official_decoder_bug=True)
    rows = {r["model"]: r for r in run_ball_wall(cfg)["rows"]}
    assert rows["mish-ln-mlp"]["approx_error"] == pytest.approx(0.707, abs=0.01)
    assert rows["simnorm-mlp"]["approx_error"] == pytest.approx(1.131, abs=0.01)
    assert rows[GROUND_TRUTH]["theta_argmin"] == pytest.approx(0.123, abs=0.002)


def test_ball_wall_sim_landscape_descends_through_the_warp_simulator():
    results = run_ball_wall(BallWallConfig.quick(landscape="sim", models=(), grid=101, descent_steps=5))
    gt = results["rows"][0]
    assert results["landscape"]["jumps"] >= 1
    assert gt["theta_final"] > -math.pi  # the adjoint gradient moved theta off the start
    with pytest.raises(PwmError, match="unknown model"):
        run_ball_wall(BallWallConfig.quick(models=("resnet",)))


def test_batched_policy_equals_the_mlp_and_gives_per_sample_gradients():
    torch.manual_seed(0)
    pi = policy_prior(latent_dim=8, hidden=16, act_dim=1, seed=0)
    with torch.no_grad():  # move off the near-zero init so every layer matters
        for p in pi.parameters():
            p.add_(0.3 * torch.randn_like(p))
    z, eps = torch.randn(3, 8), torch.randn(3, 1)
    params = per_sample_parameters(pi, 3)
    a = act(params, z, eps)
    mu, raw = pi(z).chunk(2, -1)
    log_std = -5.0 + 0.5 * 5.5 * (torch.tanh(raw) + 1)
    reference = torch.tanh(mu + eps * log_std.exp())
    torch.testing.assert_close(a, reference)
    (a.square() * torch.arange(1.0, 4.0)[:, None]).sum().backward()
    for i in range(3):
        single = per_sample_parameters(pi, 1)
        ((i + 1.0) * act(single, z[i : i + 1], eps[i : i + 1]).square().sum()).backward()
        for k in params:
            torch.testing.assert_close(params[k].grad[i], single[k].grad[0])


def test_gradient_statistics_by_hand():
    """Rewards r_t = w_i c_ti: the gradient of -sum_{t<H} r_t for sample i is -sum_{t<H} c_ti."""
    c = torch.tensor([[1.0, 3.0, 2.0], [0.0, 1.0, -1.0]])  # (T=2, n=3)
    w = torch.ones(3, 1, requires_grad=True)
    stats = gradient_statistics(w[:, 0] * c, {"w": w}, (1, 2))
    for H, g in ((1, torch.tensor([-1.0, -3.0, -2.0])), (2, torch.tensor([-1.0, -4.0, -1.0]))):
        var = g.var(unbiased=True).item()
        assert stats["variance"][H - 1] == pytest.approx(var)
        assert stats["esnr"][H - 1] == pytest.approx(g.mean().item() ** 2 / (var + 1e-9))


def test_gradient_variance_quick_run_computes_every_curve(tmp_path):
    cfg = GradientVarianceConfig.quick()
    results = run_gradient_variance(cfg)
    assert results["horizons"] == list(cfg.horizons)
    assert set(results["curves"]) == {TRUE, "wm-h3", "wm-h16"}
    for curve in results["curves"].values():
        for key in ("variance", "esnr"):
            assert len(curve[key]) == len(cfg.horizons)
            assert all(v is not None and v >= 0 and math.isfinite(v) for v in curve[key])
        assert curve["variance"][-1] > 0
    assert all(math.isfinite(v) for m in results["world_models"].values() for v in m.values())
    json.dumps(results)
    assert plot_gradient_variance(results, tmp_path / "gv.png").stat().st_size > 0


def test_gradient_variance_rejects_bad_settings():
    with pytest.raises(PwmError, match="at least 2"):
        run_gradient_variance(GradientVarianceConfig.quick(samples=1))
    with pytest.raises(PwmError, match="exceeds the episode length"):
        run_gradient_variance(GradientVarianceConfig.quick(episode_length=8))


def test_parse_horizons():
    assert parse_horizons("1..5") == (1, 2, 3, 4, 5)
    assert parse_horizons("8, 1..3,2") == (1, 2, 3, 8)
    for bad in ("0..3", "5..2", "x", "1,,2"):
        with pytest.raises(PwmError, match="--horizons"):
            parse_horizons(bad)


def test_study_cli_writes_table_figure_and_json(tmp_path):
    out = tmp_path / "bw"
    result = run(tmp_path / "home", "study", "ball-wall", "--quick", "--out", str(out))
    assert "ball-wall (analytic landscape)" in result.stdout and "SimNorm MLP" in result.stdout
    assert (out / "ball_wall.png").exists()
    saved = json.loads((out / "results.json").read_text())
    assert saved["files"]["figure"] == str(out / "ball_wall.png")

    doc = run_json(tmp_path / "home", "study", "gradient-variance", "--quick", "--horizons", "1,3", "--samples", "4")
    assert doc["horizons"] == [1, 3] and doc["config"]["samples"] == 4
    folder = tmp_path / "home" / "studies"
    assert [p.name.startswith("gradient-variance-") for p in folder.iterdir()] == [True]  # the default --out
    assert run(tmp_path / "home", "study", "gradient-variance", "--horizons", "0..2", code=2).exit_code == 2
