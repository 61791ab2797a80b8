"""Policy extraction: the pure math by hand, actor/critic layout, the frozen world model, resume, policy files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

from pwm_core.data import EpisodeWriter, open_dataset
from pwm_core.errors import PwmError
from pwm_core.nn import WorldModel, WorldModelConfig
from pwm_core.nn.actor_critic import Actor, CriticEnsemble
from pwm_core.nn.kernels import Mish
from pwm_core.tasks import resolve_tasks
from pwm_core.train.extract import (
    ExtractConfig,
    Extractor,
    Policy,
    RunningMeanStd,
    critic_minibatches,
    discounted_return,
    imagine,
    imagine_step,
    imagine_stepwise,
    linear_lr,
    load_policy,
    one_step_targets,
    policy_tensors,
    save_policy,
    start_state_sampler,
    td_lambda_targets,
)

TASKS = resolve_tasks("walker-walk,cartpole-swingup")  # row 1, cartpole: obs 5 of 24, action 1 of 6
CARTPOLE = 1


def tiny_world_model(seed: int = 0) -> WorldModel:
    cfg = WorldModelConfig(
        obs_dim=24,
        act_dim=6,
        action_dims=[6, 1],
        episode_lengths=[500, 500],
        task_names=list(TASKS.names),
        task_dim=8,
        enc_dim=32,
        num_enc_layers=2,
        mlp_dim=32,
        latent_dim=16,
        num_q=2,
    )
    torch.manual_seed(seed)
    model = WorldModel(cfg)
    nn.init.normal_(model._reward[-1].weight, std=0.5)  # TD-MPC2 starts it at 0: make rewards depend on (z, a)
    return model


def tiny_config(**kw) -> ExtractConfig:
    return ExtractConfig(
        **{
            "batch_size": 8,
            "horizon": 4,
            "critic_iterations": 2,
            "critic_batches": 2,
            "actor_units": (32, 16),
            "critic_units": (32, 16),
            "steps": 20,
            "device": "cpu",
            "return_states": 4,
            **kw,
        }
    )


def cartpole_states(batch: int = 8, seed: int = 0):
    """A synthetic start-state source: cartpole observations in the first 5 of 24 padded dims."""
    g = torch.Generator().manual_seed(seed)

    def sample() -> torch.Tensor:
        obs = torch.zeros(batch, 24)
        obs[:, :5] = torch.rand(batch, 5, generator=g) * 2 - 1
        return obs

    return sample


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Random-walk episodes of both tasks in one dataset (20 steps each)."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("extract") / "mixed.zarr"
    with EpisodeWriter.create(path, TASKS) as w:
        for task, (o, a) in (("walker-walk", (24, 6)), ("cartpole-swingup", (5, 1))):
            for _ in range(3):
                obs = np.cumsum(rng.normal(0, 0.1, (21, o)), 0).astype(np.float32)
                w.append_episode(
                    obs, rng.uniform(-1, 1, (20, a)).astype(np.float32), rng.uniform(0, 1, 20).astype(np.float32), task
                )
    return open_dataset(path)


# ---------------------------------------------------------------------------------- pure math
def test_td_lambda_targets_three_step_example():
    # gamma = lam = 0.5; rollout ends only at the horizon. Expected values are lambda-returns:
    # t=2: 3 + .5*16 = 11;  t=1: .5*(2 + .5*8) + .5*(2 + .5*3 + .25*16) = 6.75
    # t=0: .5*3 + .25*4 + .25*4.75 = 3.6875 (1-step 3, 2-step 4, 3-step 4.75)
    r = torch.tensor([[1.0], [2.0], [3.0]])
    v = torch.tensor([[4.0], [8.0], [16.0]])
    done = torch.tensor([[0.0], [0.0], [1.0]])
    assert td_lambda_targets(r, v, done, 0.5, 0.5).flatten().tolist() == [3.6875, 6.75, 11.0]
    # a rollout that also ends after step 0 (dflex early termination): t=0 falls back to one step
    done = torch.tensor([[1.0], [0.0], [1.0]])
    assert td_lambda_targets(r, v, done, 0.5, 0.5).flatten().tolist() == [3.0, 6.75, 11.0]


def test_all_ones_done_mask_reduces_td_lambda_to_one_step_exactly():
    g = torch.Generator().manual_seed(0)
    r, v = torch.rand(16, 32, generator=g), torch.randn(16, 32, generator=g) * 10
    td = td_lambda_targets(r, v, torch.ones(16, 32), 0.99, 0.95)
    assert torch.equal(td, one_step_targets(r, v, 0.99))


def test_one_step_targets():
    r, v = torch.tensor([[1.0, 2.0]]), torch.tensor([[10.0, -4.0]])
    assert one_step_targets(r, v, 0.5).tolist() == [[6.0, 0.0]]


def test_discounted_return_with_both_bootstraps():
    r = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])  # H = 3, B = 2
    v = torch.tensor([16.0, 8.0])
    # sum_t .5^t r_t = 1 + 1 + .75 = 2.75; code: + .5^4 V, paper: + .5^3 V
    assert discounted_return(r, v, 0.5, "gamma-h1").tolist() == [3.75, 0.5]
    assert discounted_return(r, v, 0.5, "gamma-h").tolist() == [4.75, 1.0]


def test_running_mean_std_chan_update_and_scale():
    rms = RunningMeanStd()
    assert (rms.mean.item(), rms.var.item(), rms.count) == (0.0, 1.0, 1e-4)
    rms.update(torch.tensor([1.0, 3.0]))  # batch mean 2, population var 1, n 2
    total = 2 + 1e-4
    assert rms.count == pytest.approx(total)
    assert rms.mean.item() == pytest.approx(2 * 2 / total)
    assert rms.var.item() == pytest.approx((1e-4 * 1 + 2 * 1 + 4 * 1e-4 * 2 / total) / total)
    rms.update(torch.tensor([5.0, 7.0, 9.0]))  # now ~ the population stats of 1, 3, 5, 7, 9
    assert rms.mean.item() == pytest.approx(5.0, rel=1e-4)
    assert rms.var.item() == pytest.approx(8.0, rel=1e-4)
    x = torch.tensor([2.0, -4.0])
    assert torch.allclose(rms.scale(x), x / math.sqrt(rms.var.item() + 1e-5))  # no mean subtraction
    other = RunningMeanStd()
    other.load_state_dict(rms.state_dict())
    assert (other.mean, other.var, other.count) == (rms.mean, rms.var, rms.count)


def test_critic_minibatches_are_time_major_contiguous_and_drop_nan_rows():
    H, B = 4, 2
    z = torch.arange(H * B, dtype=torch.float32).view(H, B, 1)  # row t*B + b holds t*B + b
    targets = 100 + z.squeeze(-1)
    batches = critic_minibatches(z, targets, n_batches=2)
    assert [zb.flatten().tolist() for zb, _ in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # steps 0-1, 2-3
    assert [t.tolist() for _, t in batches] == [[100, 101, 102, 103], [104, 105, 106, 107]]
    z[1, 0] = float("nan")  # row 2 is dropped; the slice size stays H*B/2 = 4
    batches = critic_minibatches(z, targets, n_batches=2)
    assert [zb.flatten().tolist() for zb, _ in batches] == [[0, 1, 3, 4], [5, 6, 7]]
    assert [t.tolist() for _, t in batches] == [[100, 101, 103, 104], [105, 106, 107]]


def test_linear_lr_endpoints():
    assert linear_lr(0, 10_000, 5e-4, 1e-5) == 5e-4
    assert linear_lr(10_000, 10_000, 5e-4, 1e-5) == pytest.approx(1e-5, abs=1e-18)
    assert linear_lr(5_000, 10_000, 5e-4, 1e-5) == pytest.approx(2.55e-4)
    assert linear_lr(12_000, 10_000, 5e-4, 1e-5) == linear_lr(10_000, 10_000, 5e-4, 1e-5)  # no negative lr


# ------------------------------------------------------------------------------ actor, critic
def test_actor_logstd_is_clamped_from_below_only():
    actor = Actor(16, 3, units=(8,))
    assert actor.logstd.tolist() == [-1.0] * 3
    with torch.no_grad():
        actor.logstd.copy_(torch.tensor([-3.0, -1.0, 0.5]))
    actor(torch.randn(2, 16))
    assert actor.logstd.tolist() == pytest.approx([-1.427, -1.0, 0.5])


def test_actor_blocks_apply_mish_before_layernorm():
    torch.manual_seed(0)
    actor = Actor(16, 3)
    kinds = [type(m) for m in actor.mu_net]
    assert kinds == [nn.Linear, Mish, nn.LayerNorm] * 3 + [nn.Linear]  # nn.Mish following use_kernels
    assert [m.out_features for m in actor.mu_net if isinstance(m, nn.Linear)] == [400, 200, 100, 3]
    z = torch.randn(5, 16)
    first = actor.mu_net[:3](z)
    expected = nn.functional.layer_norm(nn.functional.mish(actor.mu_net[0](z)), (400,))
    assert torch.allclose(first, expected, atol=1e-6)
    assert torch.allclose(actor(z, deterministic=True), torch.tanh(actor.mu_net(z)))


def test_critic_init_is_orthogonal_with_gain_sqrt2_and_zero_bias():
    critic = CriticEnsemble(16, num_critics=3)
    assert [tuple(w.shape) for w in critic.weights] == [(3, 400, 16), (3, 200, 400), (3, 1, 200)]
    for w, b in zip(critic.weights, critic.biases):
        assert torch.count_nonzero(b) == 0
        for k in range(3):
            wk = w[k]
            gram = wk.T @ wk if wk.shape[0] > wk.shape[1] else wk @ wk.T  # the smaller Gram matrix
            assert torch.allclose(gram, 2 * torch.eye(gram.shape[0]), atol=1e-4)
    assert not torch.equal(critic.weights[0][0], critic.weights[0][1])  # heads initialised independently


def test_critic_ensemble_equals_separate_mlps_and_detach_keeps_values():
    torch.manual_seed(0)
    critic = CriticEnsemble(6, num_critics=2, units=(5, 4))
    with torch.no_grad():
        for norm in critic.norms:  # non-trivial LayerNorm affine parameters
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    z = torch.randn(7, 6, requires_grad=True)
    out = critic(z)
    assert out.shape == (2, 7, 1) and critic.min(z).shape == (7, 1)
    for k in range(2):
        h = z
        for i, (w, b) in enumerate(zip(critic.weights, critic.biases)):
            h = h @ w[k].T + b[k]
            if i < 2:
                h = nn.functional.layer_norm(
                    nn.functional.mish(h), (h.shape[-1],), critic.norms[i].weight[k], critic.norms[i].bias[k]
                )
        assert torch.allclose(out[k], h, rtol=1e-5, atol=1e-5)  # batched vs per-head fp32 sums
    detached = critic.min(z, detach=True)
    assert torch.equal(detached, critic.min(z))
    detached.sum().backward()
    assert z.grad is not None and all(p.grad is None for p in critic.parameters())


# ------------------------------------------------------------------------------- the extractor
def test_world_model_stays_frozen_while_the_actor_learns():
    wm = tiny_world_model()
    before = {k: v.clone() for k, v in wm.state_dict().items()}
    ex = Extractor(tiny_config(), wm, CARTPOLE, cartpole_states())
    actor_before = [p.clone() for p in ex.actor.parameters()]
    critic_before = [p.clone() for p in ex.critic.parameters()]
    for _ in range(2):
        ex.step()
    assert all(torch.equal(before[k], v) for k, v in wm.state_dict().items())
    assert all(not p.requires_grad and p.grad is None for p in wm.parameters())
    assert all(not torch.equal(a, p) for a, p in zip(actor_before, ex.actor.parameters()))
    assert all(not torch.equal(c, p) for c, p in zip(critic_before, ex.critic.parameters()))


def test_critic_warmup_holds_the_actor_while_the_critic_learns():
    from dataclasses import replace

    ex = Extractor(replace(tiny_config(), critic_warmup=2), tiny_world_model(), CARTPOLE, cartpole_states())
    actor_before = [p.clone() for p in ex.actor.parameters()]
    critic_before = [p.clone() for p in ex.critic.parameters()]
    metrics = [ex.step() for _ in range(2)]
    assert all(torch.equal(a, p) for a, p in zip(actor_before, ex.actor.parameters()))
    assert all(not torch.equal(c, p) for c, p in zip(critic_before, ex.critic.parameters()))
    assert [m["actor_grad_norm"] for m in metrics] == [0.0, 0.0]
    assert all(math.isfinite(m["actor_loss"]) for m in metrics)
    ex.step()
    assert all(not torch.equal(a, p) for a, p in zip(actor_before, ex.actor.parameters()))


def test_twenty_steps_end_to_end_give_finite_metrics():
    ex = Extractor(tiny_config(), tiny_world_model(), CARTPOLE, cartpole_states())
    history = [ex.step() for _ in range(20)]
    assert ex.step_count == 20
    keys = {"actor_loss", "value_loss", "actor_grad_norm", "critic_grad_norm", "imagined_reward", "ret_std"}
    # the model_return metric at update 1, every 10th and the last (config: model_return_every = 10)
    assert [i + 1 for i, m in enumerate(history) if "model_return" in m] == [1, 10, 20]
    assert all(set(m) - {"model_return"} == keys and all(math.isfinite(v) for v in m.values()) for m in history)
    assert ex.actor_optim.param_groups[0]["lr"] == pytest.approx(linear_lr(19, 20, 5e-4, 1e-5))
    assert ex.ret_rms.count == pytest.approx(1e-4 + 20 * 8)
    assert ex.model_return() == pytest.approx(history[-1]["model_return"])


@pytest.mark.parametrize(
    "variant",
    [
        {"critic_target": "td-lambda", "bootstrap": "gamma-h"},  # the paper's recipe
        {"ret_rms": False, "detach": False, "shuffle_critic": True},
        {"amp": "bf16"},
    ],
)
def test_variants_run(variant):
    ex = Extractor(tiny_config(**variant), tiny_world_model(), CARTPOLE, cartpole_states())
    for _ in range(2):
        metrics = ex.step()
    assert all(math.isfinite(v) for v in metrics.values())


def test_mask_actions_makes_padded_dims_exactly_zero():
    wm = tiny_world_model()
    seen = []
    next_fn = wm.next
    wm.next = lambda z, a, task: (seen.append(a.detach()), next_fn(z, a, task))[1]  # record the rollout's actions
    obs = cartpole_states()()
    ex = Extractor(tiny_config(mask_actions=True), wm, CARTPOLE, cartpole_states())
    ex.step()
    assert seen and all(torch.all(a[:, 1:] == 0) and torch.all(a[:, 0] != 0) for a in seen)
    for deterministic in (True, False):
        assert torch.all(ex.act(obs, deterministic)[:, 1:] == 0)
    default = Extractor(tiny_config(), tiny_world_model(), CARTPOLE, cartpole_states())
    assert torch.all(default.act(obs)[:, 1:] != 0)  # the code drives the padded dims too


def test_start_state_sampler_takes_only_this_task(dataset):
    cfg = tiny_config()
    wm = tiny_world_model()
    sampler = start_state_sampler([dataset], wm, CARTPOLE, cfg)
    batch = sampler.sample()
    assert batch.obs.shape == (cfg.horizon + 1, cfg.batch_size, 24)
    assert set(batch.task.tolist()) == {TASKS.tasks[CARTPOLE].id}
    assert torch.all(batch.obs[..., 5:] == 0)  # padded to the model's obs dim
    with pytest.raises(PwmError, match="other tasks"):
        Extractor(cfg, wm, 0, sampler)  # a cartpole sampler for the walker row


def test_bad_start_states_and_diverging_values_raise():
    with pytest.raises(PwmError, match="start states of shape"):
        Extractor(tiny_config(), tiny_world_model(), CARTPOLE, cartpole_states(batch=5))
    ex = Extractor(tiny_config(), tiny_world_model(), CARTPOLE, cartpole_states())
    with torch.no_grad():
        ex.critic.biases[-1].fill_(2e6)
    with pytest.raises(PwmError, match="exceeds 1e"):
        ex.step()


def test_checkpoint_resume_is_bitwise(tmp_path, dataset):
    cfg = tiny_config(shuffle_critic=True)

    def fresh():
        wm = tiny_world_model()
        return Extractor(cfg, wm, CARTPOLE, start_state_sampler([dataset], wm, CARTPOLE, cfg))

    straight = fresh()
    metrics_straight = [straight.step() for _ in range(6)]
    first = fresh()
    for _ in range(3):
        first.step()
    first.save_checkpoint(tmp_path / "ckpt.pt")
    torch.rand(100)  # disturb the global generator: the checkpoint restores it
    resumed = fresh()
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    assert resumed.step_count == 3
    metrics_resumed = [resumed.step() for _ in range(3)]
    assert metrics_resumed == metrics_straight[3:]
    for a, b in ((straight.actor, resumed.actor), (straight.critic, resumed.critic)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert torch.equal(straight.ret_rms.var, resumed.ret_rms.var)
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(PwmError, match="not a pwmctl extraction checkpoint"):
        torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
        resumed.load_checkpoint(tmp_path / "other.pt")


def test_policy_save_load_gives_identical_actions(tmp_path):
    ex = Extractor(tiny_config(), tiny_world_model(), CARTPOLE, cartpole_states())
    for _ in range(2):
        ex.step()
    save_policy(ex, tmp_path / "policy", metadata={"world_model": "wm:1"})
    policy = load_policy(tmp_path / "policy")
    obs = cartpole_states(batch=16, seed=1)()
    expected = ex.act(obs)[:, :1].numpy()  # cartpole acts on the first of 6 dims
    assert policy.config["task"] == "cartpole-swingup" and policy.config["metadata"] == {"world_model": "wm:1"}
    assert np.array_equal(policy.act(obs.numpy()), expected)
    assert np.array_equal(policy.act(obs[:, :5]), expected)  # unpadded observations are padded
    assert policy.act(obs[0, :5].numpy()).shape == (1,)
    assert np.array_equal(Policy.from_extractor(ex).act(obs), expected)
    ex.step()  # new weights loaded into the same policy: act follows them
    policy.load_tensors(policy_tensors(ex))
    assert np.array_equal(policy.to("cpu").act(obs), ex.act(obs)[:, :1].numpy())
    with pytest.raises(PwmError, match="takes 5"):
        policy.act(obs[:, :7])


@pytest.mark.parametrize("kernels", ["exact", "fast"])
def test_inference_plan_is_bit_equal_to_calling_the_modules(kernels):
    from pwm_core.nn.kernels import use_kernels
    from pwm_core.nn.layers import SimNorm, inference_plan, mlp

    def run(seq, x):
        for op in inference_plan(seq):
            x = op(x)
        return x

    torch.manual_seed(0)
    encoder = mlp(11, [32], 16, act=SimNorm(8)).eval()
    actor = Actor(16, 3, (24, 12), min_logstd=-1.4)
    x = torch.randn(10, 11)
    with use_kernels(kernels), torch.no_grad():
        z = encoder(x)
        assert torch.equal(run(encoder, x), z)
        assert torch.equal(run(actor.mu_net, z), actor.mu_net(z))
        dropped = mlp(11, [32], 4, dropout=0.5).train()  # dropout in training mode: the module's own path
        torch.manual_seed(1)
        expected = dropped(x)
        torch.manual_seed(1)
        assert torch.equal(run(dropped, x), expected)


def test_load_policy_rejects_missing_corrupt_and_mismatched_files(tmp_path):
    ex = Extractor(tiny_config(), tiny_world_model(), CARTPOLE, cartpole_states())
    folder = save_policy(ex, tmp_path / "p")
    with pytest.raises(PwmError, match="has no policy.safetensors"):
        load_policy(tmp_path)
    config = yaml.safe_load((folder / "policy.yaml").read_text())
    (folder / "policy.yaml").write_text(yaml.safe_dump({**config, "latent_dim": 32}))
    with pytest.raises(PwmError, match="do not match the policy config"):
        load_policy(folder)
    (folder / "policy.yaml").write_text(yaml.safe_dump(config))
    data = (folder / "policy.safetensors").read_bytes()
    (folder / "policy.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PwmError, match="corrupt or truncated"):
        load_policy(folder)


def test_the_stepwise_rollout_is_the_rollout_bit_for_bit():
    """``imagine_stepwise`` over ``imagine_step`` (what ``compile`` compiles) runs the same ops in the same order
    as ``imagine``: equal results and equal actor gradients when nothing is compiled."""
    wm, torch_seed = tiny_world_model().requires_grad_(False), torch.manual_seed(0)
    actor, critic = Actor(16, 6, (32, 16)), CriticEnsemble(16, 2, (32, 16))
    z0, task = wm.encode(cartpole_states()(), torch.tensor(CARTPOLE)), torch.tensor(CARTPOLE)
    eps, mask = torch.randn(4, 8, 6, generator=torch_seed), wm.action_masks[CARTPOLE]
    grads = []
    for roll in (
        imagine(wm, actor, critic, z0, task, 4, eps, mask),
        imagine_stepwise(lambda z, e: imagine_step(wm, actor, critic, z, task, e, mask, True), actor, z0, 4, eps),
    ):
        actor.zero_grad()
        (roll.reward.sum() + roll.next_value[-1].sum()).backward()
        grads.append(([p.grad.clone() for p in actor.parameters()], roll))
    (g1, r1), (g2, r2) = grads
    assert all(torch.equal(a, b) for a, b in zip(r1, r2)) and all(torch.equal(a, b) for a, b in zip(g1, g2))


@pytest.mark.slow
def test_compiled_extraction_matches_eager_and_resumes_bitwise(tmp_path):
    """``compile``: the rollout step and the critic loss compiled (fast Mish traced, so fused by the compiler)
    agree with the eager updates to float rounding, and a resumed compiled run is bitwise the straight one."""
    runs = {}
    for compiled in (False, True):
        ex = Extractor(tiny_config(compile=compiled, kernels="fast"), tiny_world_model(), CARTPOLE, cartpole_states())
        runs[compiled] = [ex.step() for _ in range(2)]
        if compiled:
            ex.save_checkpoint(tmp_path / "ckpt.pt")
        runs[compiled] += [ex.step() for _ in range(2)]
    for eager, comp in zip(runs[False], runs[True]):
        assert comp.keys() == eager.keys()
        assert all(comp[k] == pytest.approx(eager[k], rel=1e-3, abs=1e-5) for k in eager)
    states = cartpole_states()
    for _ in range(2):  # two draws: the resumed extractor makes the third on creation, the updates go on from it
        states()
    resumed = Extractor(tiny_config(compile=True, kernels="fast"), tiny_world_model(), CARTPOLE, states)
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    assert [resumed.step() for _ in range(2)] == runs[True][2:]
