"""World-model files: our safetensors + YAML pair, and TD-MPC2 ``.pt`` checkpoints
(docs/algorithm.md#world-model-checkpoint-files).

Our format (a folder): ``model.safetensors`` holds ``WorldModel.state_dict()`` (learnable
parameters, target Qs, action masks), ``config.yaml`` holds ``WorldModelConfig.to_dict()``.
Nothing is unpickled.

TD-MPC2 checkpoints are ``torch.save({"model": state_dict})``. Two key layouts exist:
- current (since Nov 2024): ``_encoder.state.<i>.*``, ``_Qs.params.<layer>.*`` stacked over heads,
  ``_detach_Qs_params.*`` (same tensors), ``_target_Qs_params.*``, ``_action_masks``,
  ``log_std_min`` / ``log_std_dif`` and TensorDict ``__batch_size`` / ``__device`` entries;
- released 2023 checkpoints: Q parameters as a flat list ``_Qs.params.<n>`` /
  ``_target_Qs.params.<n>``, n -> layer n // 4, name (W, b, LN-W, LN-b)[n % 4]; no masks, no log-std.
Our own keys differ only in ``_encoder.<i>`` (PWM's plain Sequential) and ``_target_Qs.params.*``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from pwm_core.errors import PwmError
from pwm_core.nn.sizes import WorldModelConfig
from pwm_core.nn.world_model import WorldModel

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
_FLAT_NAMES = ("weight", "bias", "ln.weight", "ln.bias")  # 2023 flat-Q order within a layer
_FLAT_Q = re.compile(r"^(_Qs|_target_Qs)\.params\.(\d+)$")
_OPTIONAL_GROUPS = ("_pi.", "_Qs.", "_target_Qs.")  # may be absent from PWM's own checkpoints
_LIST_AT_MOST = 12  # names per category in an error line


def save_world_model(model: WorldModel, folder: str | Path) -> None:
    """Write ``folder/model.safetensors`` and ``folder/config.yaml`` (the folder is created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, folder / MODEL_FILE, metadata={"format": "pwm-worldmodel"})
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(model.cfg.to_dict(), sort_keys=False))


def load_world_model(folder: str | Path, device: str | torch.device = "cpu") -> WorldModel:
    """Rebuild a model saved by :func:`save_world_model`; any inconsistency is a one-line PwmError."""
    folder = Path(folder)
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise PwmError(f"{folder} has no {name}: a world-model folder holds {MODEL_FILE} and {CONFIG_FILE}")
    try:
        raw = yaml.safe_load((folder / CONFIG_FILE).read_text())
    except yaml.YAMLError as e:
        raise PwmError(f"{CONFIG_FILE} in {folder} is not valid YAML: {one_line(e)}") from None
    cfg = WorldModelConfig.from_dict(raw)
    try:
        tensors = load_file(folder / MODEL_FILE)
    except (SafetensorError, OSError, ValueError) as e:
        raise PwmError(f"{MODEL_FILE} in {folder} is corrupt or truncated: {one_line(e)}") from None
    model = WorldModel(cfg)
    load_matching(model, tensors, f"{MODEL_FILE} does not match {CONFIG_FILE} in {folder}")
    return model.to(device)


def tdmpc2_state_dict(model: WorldModel) -> dict[str, Tensor]:
    """The model's weights under TD-MPC2's current key layout (tensors share memory with the model).

    ``torch.save({"model": tdmpc2_state_dict(m)}, path)`` writes a TD-MPC2-style checkpoint; the
    TensorDict ``__batch_size`` / ``__device`` bookkeeping entries are not written.
    """
    sd: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("_encoder."):
            key = "_encoder.state." + key.removeprefix("_encoder.")
        elif key.startswith("_target_Qs."):
            key = "_target_Qs_params." + key.removeprefix("_target_Qs.params.")
        elif key.startswith("_Qs."):
            sd["_detach_Qs_params." + key.removeprefix("_Qs.params.")] = value
        sd[key] = value
    sd["log_std_min"] = torch.tensor(model.cfg.log_std_min)
    sd["log_std_dif"] = torch.tensor(model.cfg.log_std_max - model.cfg.log_std_min)
    return sd


def import_tdmpc2_checkpoint(path: str | Path, cfg: WorldModelConfig) -> WorldModel:
    """Load a TD-MPC2 (current or 2023 layout) or PWM ``.pt`` checkpoint into a WorldModel of ``cfg``.

    Absent ``_pi`` / ``_Qs`` groups (PWM's checkpoints may drop them) stay freshly initialised, an
    absent target copies the online Qs; a file's log-std range replaces cfg's. Each such decision
    is logged and kept in ``model.import_notes``. Missing, unexpected or mis-shaped tensors raise one
    PwmError listing them.
    """
    path = Path(path)
    if not path.is_file():
        raise PwmError(f"no TD-MPC2 checkpoint at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated zips and foreign pickles
        raise PwmError(f"cannot read {path} as a TD-MPC2 checkpoint: {one_line(e)}") from None
    sd = obj["model"] if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
    if not isinstance(sd, dict):
        raise PwmError(f"{path} holds a {type(sd).__name__}, not a state dict (or {{'model': ...}})")

    found: dict[str, Tensor] = {}
    source: dict[str, str] = {}  # our key -> the file's key, for messages
    unexpected: list[str] = []
    special: dict[str, Tensor] = {}
    for key, value in sd.items():
        if not isinstance(key, str) or key.endswith(("__batch_size", "__device")):
            continue  # TensorDict bookkeeping
        if not isinstance(value, Tensor):
            unexpected.append(f"{key} (not a tensor)")
        elif key in ("log_std_min", "log_std_dif", "_action_masks"):
            special[key] = value
        elif not key.startswith("_detach_Qs"):  # a second view of _Qs
            ours = _our_key(key)
            found[ours], source[ours] = value, key

    notes: list[str] = []
    if "log_std_min" in special and "log_std_dif" in special:
        lo = float(special["log_std_min"])
        hi = lo + float(special["log_std_dif"])
        if (lo, hi) != (cfg.log_std_min, cfg.log_std_max):
            notes.append(f"policy-prior log-std range [{lo:g}, {hi:g}] taken from the checkpoint")
            cfg = replace(cfg, log_std_min=lo, log_std_max=hi)
    model = WorldModel(cfg)
    expected = model.state_dict()
    absent = [g for g in _OPTIONAL_GROUPS if not any(k.startswith(g) for k in found)]
    required = {k: v.shape for k, v in expected.items() if not k.startswith(tuple(absent)) and k != "_action_masks"}
    if "_action_masks" in special:
        found["_action_masks"] = special["_action_masks"]
        required["_action_masks"] = expected["_action_masks"].shape
    shapes = {k: v.shape for k, v in found.items()}
    problems = shape_mismatch(shapes, required, source, unexpected)
    if problems:
        raise PwmError(
            f"{path} does not match the world-model config "
            f"({cfg.size or 'custom size'}, {cfg.n_tasks} tasks): {problems}"
        )
    if "_action_masks" in found and not torch.equal(found["_action_masks"].float(), model.action_masks):
        file_dims = found["_action_masks"].sum(-1).long().tolist()
        raise PwmError(
            f"{path} has action dims {file_dims} per task, the config {cfg.action_dims}: "
            "the checkpoint was trained on another task set"
        )

    model.load_state_dict(found, strict=False)
    if "_pi." in absent:
        notes.append("no policy prior (_pi) in the checkpoint: kept freshly initialised")
    if "_Qs." in absent:
        notes.append("no Q-ensemble (_Qs) in the checkpoint: kept freshly initialised")
    if "_target_Qs." in absent:
        model.update_targets(1.0)
        if "_Qs." not in absent:
            notes.append("no target Qs in the checkpoint: target set to the online Qs")
    for note in notes:
        log.warning("%s: %s", path.name, note)
    model.import_notes = notes
    return model


def _our_key(key: str) -> str:
    """A TD-MPC2 key (current or 2023 layout) -> the matching WorldModel.state_dict() key."""
    if m := _FLAT_Q.match(key):
        n = int(m[2])
        return f"{m[1]}.params.{n // 4}.{_FLAT_NAMES[n % 4]}"
    if key.startswith("_encoder.state."):
        return "_encoder." + key.removeprefix("_encoder.state.")
    if key.startswith("_target_Qs_params."):
        return "_target_Qs.params." + key.removeprefix("_target_Qs_params.")
    return key


def load_matching(module: torch.nn.Module, tensors: dict[str, Tensor], what: str) -> None:
    """``module.load_state_dict(tensors)`` after checking names and shapes: any missing, unexpected or
    mis-shaped tensor is one PwmError ``"{what}: <the differences>"``."""
    problems = shape_mismatch(
        {k: v.shape for k, v in tensors.items()}, {k: v.shape for k, v in module.state_dict().items()}
    )
    if problems:
        raise PwmError(f"{what}: {problems}")
    module.load_state_dict(tensors)


def shape_mismatch(
    found: dict[str, torch.Size],
    required: dict[str, torch.Size],
    source: dict[str, str] | None = None,
    extra_unexpected: list[str] | None = None,
) -> str:
    """'' if ``found`` has exactly the ``required`` shapes; else one line naming every difference
    (under the file's key names given by ``source``)."""
    source = source or {}
    misshaped = [
        f"{source.get(k, k)}: file {list(found[k])} vs model {list(s)}"
        for k, s in required.items()
        if k in found and tuple(found[k]) != tuple(s)
    ]
    missing = [k for k in required if k not in found]
    unexpected = [source.get(k, k) for k in found if k not in required]
    unexpected += extra_unexpected or []
    parts = [
        f"{len(items)} {what} tensor{'s' if len(items) > 1 else ''} ({_listing(items)})"
        for what, items in (("mis-shaped", misshaped), ("missing", missing), ("unexpected", unexpected))
        if items
    ]
    return "; ".join(parts)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_AT_MOST])
    return shown if len(items) <= _LIST_AT_MOST else f"{shown}, ... +{len(items) - _LIST_AT_MOST} more"


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__
