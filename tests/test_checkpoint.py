"""World-model files: safetensors round trip, clear errors, TD-MPC2 checkpoints (current and 2023 layouts)."""

from __future__ import annotations

import pytest
import torch
import yaml

from pwm_core.errors import PwmError
from pwm_core.nn import (
    WorldModel,
    import_tdmpc2_checkpoint,
    load_world_model,
    save_world_model,
    tdmpc2_state_dict,
    world_model_config,
)
from pwm_core.tasks import resolve_tasks

TWO = resolve_tasks("walker-walk,cartpole-swingup")
FLAT_NAMES = ("weight", "bias", "ln.weight", "ln.bias")
NOT_IN_2023 = ("_action_masks", "log_std_min", "log_std_dif")


def random_model(size="1M", task_set=TWO) -> WorldModel:
    """A model whose every tensor is random, so that any mix-up changes the outputs."""
    torch.manual_seed(0)
    model = WorldModel(world_model_config(size, task_set))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
        for t in model._target_Qs.buffers():
            t.normal_(0, 0.1)
    return model.eval()


def outputs(model: WorldModel) -> dict[str, torch.Tensor]:
    """Deterministic outputs of every component on fixed inputs."""
    g = torch.Generator().manual_seed(1)
    task = torch.tensor([0, 1, 1])
    obs, a = torch.randn(3, 24, generator=g), torch.rand(3, 6, generator=g)
    with torch.no_grad():
        z = model.encode(obs, task)
        return {
            "z": z,
            "next": model.next(z, a, task),
            "reward": model.reward(z, a, task),
            "Q": model.Q(z, a, task, "all"),
            "target_Q": model.Q(z, a, task, "all", target=True),
            "pi_mean": model.pi(z, task)[1]["mean"],
        }


def assert_same_outputs(a: WorldModel, b: WorldModel) -> None:
    out_a, out_b = outputs(a), outputs(b)
    for key in out_a:
        torch.testing.assert_close(out_b[key], out_a[key], rtol=0, atol=0, msg=key)


def test_save_load_roundtrip_gives_identical_outputs(tmp_path):
    model = random_model()
    save_world_model(model, tmp_path / "wm")
    assert sorted(p.name for p in (tmp_path / "wm").iterdir()) == ["config.yaml", "model.safetensors"]
    loaded = load_world_model(tmp_path / "wm").eval()
    assert loaded.cfg == model.cfg
    assert_same_outputs(model, loaded)


def test_load_missing_folder_or_file(tmp_path):
    with pytest.raises(PwmError, match="has no model.safetensors"):
        load_world_model(tmp_path)
    save_world_model(random_model(), tmp_path)
    (tmp_path / "config.yaml").unlink()
    with pytest.raises(PwmError, match="has no config.yaml"):
        load_world_model(tmp_path)


def test_truncated_safetensors_is_a_one_line_error(tmp_path):
    save_world_model(random_model(), tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(PwmError, match="model.safetensors in .* is corrupt or truncated: ") as e:
        load_world_model(tmp_path)
    assert "\n" not in str(e.value)


def test_config_weights_size_mismatch_lists_tensors(tmp_path):
    save_world_model(random_model(), tmp_path)
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    cfg["obs_dim"] = 39  # encoder input 24 + 96 -> 39 + 96
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(PwmError) as e:
        load_world_model(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("model.safetensors does not match config.yaml")
    assert "1 mis-shaped tensor (_encoder.0.weight: file [256, 120] vs model [256, 135])" in msg


def test_config_yaml_with_unknown_key(tmp_path):
    save_world_model(random_model(), tmp_path)
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**cfg, "horizon": 16}))
    with pytest.raises(PwmError, match="unknown keys horizon"):
        load_world_model(tmp_path)


def test_tdmpc2_current_layout_roundtrip(tmp_path):
    model = random_model()
    sd = tdmpc2_state_dict(model)
    assert "_encoder.state.0.weight" in sd and "_target_Qs_params.2.bias" in sd
    assert sd["_Qs.params.0.ln.weight"].shape == (2, 384)  # leading num_q dim
    assert torch.equal(sd["_detach_Qs_params.1.weight"], sd["_Qs.params.1.weight"])
    assert sd["log_std_dif"].item() == 12.0
    for prefix in ("_Qs.params.", "_detach_Qs_params.", "_target_Qs_params."):  # TensorDict entries
        sd[prefix + "__batch_size"], sd[prefix + "__device"] = torch.Size([2]), "cpu"
    torch.save({"model": sd}, tmp_path / "tdmpc2.pt")
    imported = import_tdmpc2_checkpoint(tmp_path / "tdmpc2.pt", model.cfg).eval()
    assert imported.import_notes == []
    assert_same_outputs(model, imported)


def flat_2023_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TD-MPC2's released-checkpoint layout: flat Q lists, no masks, no log-std buffers."""
    out = {}
    for key, value in sd.items():
        for current, flat in (("_Qs.params.", "_Qs.params."), ("_target_Qs_params.", "_target_Qs.params.")):
            if key.startswith(current):
                layer, name = key.removeprefix(current).split(".", 1)
                out[f"{flat}{4 * int(layer) + FLAT_NAMES.index(name)}"] = value
                break
        else:
            if not key.startswith("_detach_Qs") and key not in NOT_IN_2023:
                out[key] = value
    return out


def test_tdmpc2_flat_2023_layout_roundtrip(tmp_path):
    model = random_model()
    sd = flat_2023_layout(tdmpc2_state_dict(model))
    assert {f"_Qs.params.{n}" for n in range(10)} <= set(sd) and "_Qs.params.10" not in sd
    torch.save(sd, tmp_path / "mt-1M.pt")  # a bare state dict
    imported = import_tdmpc2_checkpoint(tmp_path / "mt-1M.pt", model.cfg).eval()
    assert_same_outputs(model, imported)
    assert torch.equal(imported.action_masks, model.action_masks)


def test_checkpoint_with_missing_and_extra_key_lists_both(tmp_path):
    model = random_model()
    sd = tdmpc2_state_dict(model)
    del sd["_dynamics.1.ln.bias"]
    sd["_termination.0.weight"] = torch.zeros(3)
    torch.save({"model": sd}, tmp_path / "bad.pt")
    with pytest.raises(PwmError) as e:
        import_tdmpc2_checkpoint(tmp_path / "bad.pt", model.cfg)
    msg = str(e.value)
    assert "\n" not in msg
    assert "1 missing tensor (_dynamics.1.ln.bias)" in msg
    assert "1 unexpected tensor (_termination.0.weight)" in msg


def test_checkpoint_for_another_size_lists_mis_shaped_tensors(tmp_path):
    torch.save({"model": tdmpc2_state_dict(random_model("1M"))}, tmp_path / "1M.pt")
    shape = r"\(_task_emb.weight: file \[2, 96\] vs model \[2, 64\]"
    with pytest.raises(PwmError, match=r"mis-shaped tensors " + shape):
        import_tdmpc2_checkpoint(tmp_path / "1M.pt", world_model_config("5M", TWO))


def test_pwm_checkpoint_without_pi_and_qs_keeps_fresh_heads(tmp_path):
    model = random_model()
    sd = {k: v for k, v in tdmpc2_state_dict(model).items() if "_pi" not in k and "_Qs" not in k}
    torch.save({"model": sd}, tmp_path / "pwm.pt")
    imported = import_tdmpc2_checkpoint(tmp_path / "pwm.pt", model.cfg).eval()
    assert len(imported.import_notes) == 2
    assert "_pi" in imported.import_notes[0] and "_Qs" in imported.import_notes[1]
    fresh, ref = outputs(imported), outputs(model)
    for key in ("z", "next", "reward"):
        torch.testing.assert_close(fresh[key], ref[key], rtol=0, atol=0)
    assert fresh["Q"].abs().max() < 1e-6  # freshly initialised heads: zero last layer, uniform logits
    torch.testing.assert_close(fresh["target_Q"], fresh["Q"])


def test_log_std_range_is_taken_from_the_checkpoint(tmp_path):
    model = random_model()
    sd = tdmpc2_state_dict(model)
    sd["log_std_min"], sd["log_std_dif"] = torch.tensor(-5.0), torch.tensor(5.5)  # PWM's fork
    torch.save({"model": sd}, tmp_path / "fork.pt")
    imported = import_tdmpc2_checkpoint(tmp_path / "fork.pt", model.cfg)
    assert (imported.cfg.log_std_min, imported.cfg.log_std_max) == (-5.0, 0.5)
    assert "log-std range [-5, 0.5]" in imported.import_notes[0]


def test_checkpoint_of_another_task_set_is_refused(tmp_path):
    model = random_model()
    torch.save({"model": tdmpc2_state_dict(model)}, tmp_path / "two.pt")
    other = world_model_config("1M", resolve_tasks("walker-walk,cheetah-run"))  # same shapes, dims 6/6
    with pytest.raises(PwmError, match=r"action dims \[6, 1\] per task, the config \[6, 6\]"):
        import_tdmpc2_checkpoint(tmp_path / "two.pt", other)


def test_unreadable_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PwmError, match="cannot read .* as a TD-MPC2 checkpoint"):
        import_tdmpc2_checkpoint(tmp_path / "junk.pt", random_model().cfg)
    with pytest.raises(PwmError, match="no TD-MPC2 checkpoint at"):
        import_tdmpc2_checkpoint(tmp_path / "missing.pt", random_model().cfg)
