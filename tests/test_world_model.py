"""World-model layers, sizes and the WorldModel's TD-MPC2 behaviour (shapes, init, masks, Q targets)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pwm_core.errors import PwmError
from pwm_core.nn import (
    SIZES,
    NormedLinear,
    QEnsemble,
    SimNorm,
    WorldModel,
    WorldModelConfig,
    count_parameters,
    mlp,
    two_hot_inv,
    world_model_config,
)
from pwm_core.tasks import resolve_tasks

MT30, MT80 = resolve_tasks("mt30"), resolve_tasks("mt80")
TWO = resolve_tasks("walker-walk,cartpole-swingup")  # action dims 6 and 1


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return WorldModel(world_model_config("1M", TWO)).eval()


def test_normed_linear_is_linear_layernorm_mish():
    torch.manual_seed(0)
    layer = NormedLinear(5, 4)
    assert set(layer.state_dict()) == {"weight", "bias", "ln.weight", "ln.bias"}
    x = torch.randn(3, 5)
    expected = F.mish(F.layer_norm(x @ layer.weight.T + layer.bias, (4,)))
    torch.testing.assert_close(layer(x), expected)


def test_simnorm_groups_sum_to_one():
    y = SimNorm(8)(torch.randn(2, 3, 32) * 5)
    assert y.shape == (2, 3, 32) and (y >= 0).all()
    torch.testing.assert_close(y.view(2, 3, 4, 8).sum(-1), torch.ones(2, 3, 4))


def test_mlp_layers_and_dropout_in_first_layer_only():
    net = mlp(10, [16, 16], 3, dropout=0.1)
    assert [type(m) for m in net] == [NormedLinear, NormedLinear, nn.Linear]
    assert net[0].dropout.p == 0.1 and net[1].dropout is None
    last = mlp(10, [16], 8, act=SimNorm(4))[-1]
    assert isinstance(last, NormedLinear) and isinstance(last.act, SimNorm)


def test_q_ensemble_equals_independent_heads():
    torch.manual_seed(0)
    ens = QEnsemble(3, 10, [16, 16], 7).eval()
    for p in ens.parameters():
        p.data.normal_()
    heads = [mlp(10, [16, 16], 7) for _ in range(3)]
    for k, head in enumerate(heads):
        head.load_state_dict({name: t[k] for name, t in ens.params.state_dict().items()})
    x = torch.randn(4, 5, 10)  # (T, B, in)
    out = ens(x)
    assert out.shape == (3, 4, 5, 7)
    for k, head in enumerate(heads):
        torch.testing.assert_close(out[k], head(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ens(x, heads=torch.tensor([2, 0])), out[[2, 0]])


def test_q_ensemble_dropout_only_in_train_mode():
    ens = QEnsemble(2, 8, [64, 64], 5, dropout=0.5)
    x = torch.randn(32, 8)
    assert not torch.equal(ens.train()(x), ens(x))
    assert torch.equal(ens.eval()(x), ens(x))


@pytest.mark.parametrize("size", ["1M", "5M"])
@pytest.mark.parametrize("task_set", [MT30, TWO], ids=["mt30", "two-tasks"])
def test_output_shapes(size, task_set):
    cfg = world_model_config(size, task_set)
    model = WorldModel(cfg)
    B, O, A, Z = 4, task_set.obs_dim, task_set.act_dim, cfg.latent_dim
    task = torch.tensor([0, 1, 1, 0])
    z = model.encode(torch.randn(B, O), task)
    a = torch.rand(B, A) * 2 - 1
    assert z.shape == (B, Z)
    assert model.next(z, a, task).shape == (B, Z)
    assert model.reward(z, a, task).shape == (B, 101)
    action, info = model.pi(z, task)
    assert action.shape == info["mean"].shape == info["log_std"].shape == (B, A)
    assert info["log_prob"].shape == info["entropy"].shape == info["scaled_entropy"].shape == (B, 1)
    assert model.Q(z, a, task, "all").shape == (cfg.num_q, B, 101)
    assert model.Q(z, a, task, "min").shape == model.Q(z, a, task, "avg").shape == (B, 1)
    assert model.discount(task).shape == (B, 1)


def test_encode_time_major(small):
    task = torch.tensor([0, 1, 1])
    obs = torch.randn(5, 3, 24)
    z = small.encode(obs, task)
    assert z.shape == (5, 3, 128)
    torch.testing.assert_close(z[2], small.encode(obs[2], task))
    torch.testing.assert_close(z.view(5, 3, 16, 8).sum(-1), torch.ones(5, 3, 16))  # SimNorm output
    a = torch.zeros(5, 3, 6)
    assert small.next(z, a, task).shape == (5, 3, 128)
    assert small.Q(z, a, task, "all").shape == (2, 5, 3, 101)


def test_int_task_equals_tensor_task(small):
    obs = torch.randn(3, 24)
    torch.testing.assert_close(small.encode(obs, 1), small.encode(obs, torch.tensor([1, 1, 1])))
    with pytest.raises(PwmError, match="out of range"):
        small.encode(obs, 2)


def test_zero_initialised_heads_decode_to_zero(small):
    z = small.encode(torch.randn(8, 24), 0)
    a = torch.rand(8, 6)
    r = two_hot_inv(small.reward(z, a, 0))
    assert r.abs().max() < 1e-6
    assert small.Q(z, a, 0, "min").abs().max() < 1e-6
    assert small.Q(z, a, 0, "avg", target=True).abs().max() < 1e-6


def test_pi_masks_padded_action_dims_to_exactly_zero(small):
    z = small.encode(torch.randn(6, 24), torch.tensor([0, 1, 0, 1, 1, 1]))
    task = torch.tensor([0, 1, 0, 1, 1, 1])
    action, info = small.pi(z, task)
    cart = task == 1
    assert (action[cart, 1:] == 0).all() and (info["mean"][cart, 1:] == 0).all()
    assert (info["log_std"][cart, 1:] == 0).all()
    assert (action[cart, 0] != 0).all() and (action[~cart] != 0).all()
    assert (action.abs() < 1).all()
    cfg = small.cfg
    valid = small.action_masks[task].bool()
    assert ((info["log_std"][valid] >= cfg.log_std_min) & (info["log_std"][valid] <= cfg.log_std_max)).all()


def test_pi_log_prob_and_scaled_entropy(small):
    torch.manual_seed(1)
    task = torch.tensor([0, 1])  # walker: 6 valid action dims, cartpole: 1
    z = small.encode(torch.randn(2, 24), task)
    action, info = small.pi(z, task)
    std = info["log_std"].exp()
    eps = (torch.atanh(action) - torch.atanh(info["mean"])) / std  # recover the Gaussian noise
    c = 0.5 * math.log(2 * math.pi)
    # Gaussian log-density over all 6 dims (padded dims: eps = log_std = 0, each adds -c) ...
    gauss = (-0.5 * eps**2 - info["log_std"] - c).sum(-1, keepdim=True)
    # ... minus the tanh correction; the scaled entropy is -gauss times the valid dims.
    squash = torch.log(1 - action**2 + 1e-6).sum(-1, keepdim=True)
    torch.testing.assert_close(info["log_prob"], gauss - squash, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(info["entropy"], -info["log_prob"])
    torch.testing.assert_close(info["scaled_entropy"], -gauss * torch.tensor([[6.0], [1.0]]), rtol=1e-3, atol=1e-3)


def test_q_detach_blocks_gradient_to_q_params_only(small):
    z = small.encode(torch.randn(4, 24), 0).detach().requires_grad_(True)
    a = torch.rand(4, 6)
    for p in small._Qs.parameters():
        p.grad = None
    small.Q(z, a, 0, "avg", detach=True).sum().backward()
    assert all(p.grad is None for p in small._Qs.parameters())
    assert z.grad is not None
    small.Q(z, a, 0, "all").sum().backward()
    assert all(p.grad is not None for p in small._Qs.parameters())


def test_update_targets_is_polyak():
    model = WorldModel(world_model_config("1M", TWO))
    assert not any(n.startswith("_target_Qs") for n, _ in model.named_parameters())
    w_online = model._Qs.params[0].weight
    w_target = model._target_Qs.params[0].weight
    torch.testing.assert_close(w_target, w_online.detach())  # starts as a copy
    before = w_target.clone()
    with torch.no_grad():
        w_online.add_(1.0)
    model.update_targets(0.01)
    torch.testing.assert_close(w_target, before + 0.01)


def test_discount_per_task():
    model = WorldModel(world_model_config("1M", resolve_tasks("walker-walk,mw-reach")))
    # DMC: 500 decisions -> (100-1)/100 = 0.99; Meta-World: 100 -> (20-1)/20 = 0.95
    gamma = model.discount(torch.tensor([0, 1, 0]))
    torch.testing.assert_close(gamma, torch.tensor([[0.99], [0.95], [0.99]]))


def test_task_embedding_rows_have_norm_at_most_one(small):
    with torch.no_grad():
        small._task_emb.weight[1] = 5.0
    small.encode(torch.randn(2, 24), 1)
    assert small._task_emb.weight[1].norm().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("size", ["1M", "5M"])
@pytest.mark.parametrize("task_set", [MT30, MT80], ids=["mt30", "mt80"])
def test_count_parameters_equals_built_model(size, task_set):
    cfg = world_model_config(size, task_set)
    model = WorldModel(cfg)
    counts = count_parameters(cfg)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    for name in ("encoder", "dynamics", "reward", "pi", "Qs", "task_emb"):
        assert counts[name] == sum(p.numel() for p in getattr(model, f"_{name}").parameters())


PUBLISHED = {  # docs/algorithm.md#world-model-size-presets, millions of learnable parameters
    "mt30": {"1M": 1.43, "5M": 5.24, "19M": 16.0, "48M": 48.2, "317M": 317.3},
    "mt80": {"1M": 1.44, "5M": 5.39, "19M": 19.0, "48M": 48.8, "317M": 317.4},
}


@pytest.mark.parametrize("task_set", [MT30, MT80], ids=["mt30", "mt80"])
@pytest.mark.parametrize("size", SIZES)
def test_count_parameters_matches_published_totals(size, task_set):
    total = count_parameters(world_model_config(size, task_set))["total"] / 1e6
    digits = 2 if size in ("1M", "5M") else 1
    assert round(total, digits) == PUBLISHED[task_set.name][size]


def test_mt80_48m_breakdown():
    c = count_parameters(world_model_config("48M", MT80))
    got = {k: round(v / 1e6, 2) for k, v in c.items() if k != "task_emb"}
    assert got == {"encoder": 8.06, "dynamics": 6.16, "reward": 4.96, "pi": 4.79, "Qs": 24.81, "total": 48.79}
    assert c["task_emb"] == 7680


def test_size_presets_follow_tdmpc2_parser():
    assert world_model_config("19M", MT30).latent_dim == 512
    assert world_model_config("19M", MT80).latent_dim == 768
    assert [world_model_config(s, MT30).task_dim for s in SIZES] == [96, 64, 64, 64, 96]
    assert {world_model_config(s, MT80).task_dim for s in SIZES} == {96}
    assert world_model_config("48M", MT30, task_dim=96).task_dim == 96
    assert world_model_config("48m", MT30).size == world_model_config("48", MT30).size == "48M"
    one = world_model_config("5M", resolve_tasks("walker-walk"))
    assert (one.n_tasks, one.task_dim, one.obs_dim, one.act_dim) == (1, 64, 24, 6)
    with pytest.raises(PwmError, match="1M, 5M, 19M, 48M, 317M"):
        world_model_config("7M", MT30)


def test_config_dict_roundtrip_and_strict_keys():
    cfg = world_model_config("5M", TWO)
    d = cfg.to_dict()
    assert WorldModelConfig.from_dict(d) == cfg
    assert cfg.discounts == [0.99, 0.99] and cfg.n_tasks == 2
    with pytest.raises(PwmError, match="unknown keys bogus.*missing keys latent_dim"):
        WorldModelConfig.from_dict({**{k: v for k, v in d.items() if k != "latent_dim"}, "bogus": 1})
    with pytest.raises(PwmError, match="one entry per task"):
        WorldModelConfig.from_dict({**d, "action_dims": [6]})
