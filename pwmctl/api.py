"""The Python API: artifacts by ref or Hub repo id, as objects you can use in a notebook.

    from pwmctl import api

    policy = api.load_policy("policy/cartpole-balance")      # the local registry ($PWM_HOME or ~/.pwm)
    policy = api.load_policy("me/pwm-walker-walk@v3")        # a Hub repo: pulled into it first
    returns = api.rollout(policy, "cartpole-balance", seed=0, episodes=2)

A *local ref* is ``kind/name[:vN]`` (or a bare name, whose kind the function implies); anything else
with a ``/`` (``ORG/NAME[@vN|@SHA]``, ``models/ORG/NAME``, ``datasets/ORG/NAME``) is a *Hub repo id*,
pulled as ``pwmctl pull`` does: pinned to a commit, every file checked, registered as a local version
(a commit already here is not downloaded again). Before loading, the local version is re-hashed
against its manifest, as ``pwmctl verify`` does. Every bad input raises a
:class:`~pwm_core.errors.PwmError` or :class:`~registry.errors.RegistryError` with a one-line message.
See docs/python-api.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from pwm_core.data import EpisodeDataset
from pwm_core.errors import PwmError
from pwm_core.nn.world_model import WorldModel
from pwm_core.policy import Policy
from pwmctl.console import default_home
from registry import KINDS, Artifact, IntegrityError, Registry

Device = str | torch.device
_LOADER_OF = {"policy": "load_policy", "worldmodel": "load_world_model", "dataset": "open_dataset"}  # per kind


class Actor(Protocol):
    """Anything that acts from one raw observation: :class:`~pwm_core.policy.Policy`, a SHAC policy."""

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray: ...


def is_hub_id(ref_or_repo: str) -> bool:
    """True for a Hub repo id (``ORG/NAME[@REV]``, ``models/..``, ``datasets/..``), False for a local ref
    (``kind/name[:vN]`` with kind one of dataset, worldmodel, policy, report, or a bare name)."""
    text = ref_or_repo.strip()
    head, slash, rest = text.partition("/")
    if "@" in text:
        return True
    return bool(slash) and not (head in KINDS and "/" not in rest)


def resolve(
    ref_or_repo: str,
    kind: str | None = None,
    home: str | os.PathLike | None = None,
    *,
    verify: bool = True,
    endpoint: str | None = None,
) -> Artifact:
    """The local artifact version a ref names, or the one a Hub repo id is pulled into.

    Args:
        kind: the kind it must be (and the kind of a bare name); None accepts any kind.
        home: the registry (default $PWM_HOME, else ~/.pwm).
        verify: re-hash its files against the manifest first (IntegrityError if any differs).
        endpoint: the Hub (default: $PWMCTL_HUB_ENDPOINT, config hub.endpoint, $HF_ENDPOINT, huggingface.co).
    """
    reg = Registry(Path(home).expanduser() if home is not None else default_home())
    if is_hub_id(ref_or_repo):
        from registry import hub

        repo_type = hub.repo_type_for(kind) if kind is not None else None
        endpoint = _hub_endpoint(reg.home, endpoint)
        artifact = hub.pull(reg, ref_or_repo, repo_type=repo_type, endpoint=endpoint).artifact
    else:
        artifact = reg.resolve(ref_or_repo, default_kind=kind)
    if kind is not None and artifact.kind != kind:
        raise PwmError(
            f"{ref_or_repo} is {artifact.ref}, a {artifact.kind}, not a {kind}: "
            f"use {_LOADER_OF.get(artifact.kind, 'resolve')}()"
        )
    if verify:
        problems = reg.verify(artifact.ref)
        if problems:
            raise IntegrityError.from_problems(artifact.ref, problems)
    return artifact


def load_policy(
    ref_or_repo: str, home: str | os.PathLike | None = None, *, device: Device = "cpu", verify: bool = True
) -> Policy:
    """A policy artifact, ready to act: ``policy.act(obs (O,)) -> action (A,)`` in [-1, 1], float32
    (or a batch: (N, O) -> (N, A)). ``ref_or_repo``: ``policy/NAME[:vN]``, a bare ``NAME``, or a Hub repo
    id ``ORG/NAME[@vN]``. A SHAC policy (diffsim tasks) is a ``ShacPolicy`` with the same ``act`` / ``config``.
    """
    return _read(resolve(ref_or_repo, "policy", home, verify=verify), device)


def load_world_model(
    ref_or_repo: str, home: str | os.PathLike | None = None, *, device: Device = "cpu", verify: bool = True
) -> WorldModel:
    """A world-model artifact as a :class:`~pwm_core.nn.world_model.WorldModel` (``encode``, ``next``,
    ``reward``, ``pi``, ``Q``; its config in ``.cfg``). ``ref_or_repo``: ``worldmodel/NAME[:vN]``, a
    bare ``NAME``, or a Hub repo id."""
    return _read(resolve(ref_or_repo, "worldmodel", home, verify=verify), device)


def from_pretrained(
    ref_or_repo: str, home: str | os.PathLike | None = None, *, device: Device = "cpu", verify: bool = True
) -> Policy | WorldModel:
    """A policy or a world model, whichever the artifact is (a bare name means a policy)."""
    kind = "policy" if "/" not in ref_or_repo and not is_hub_id(ref_or_repo) else None
    return _read(resolve(ref_or_repo, kind, home, verify=verify), device)


def open_dataset(ref: str, home: str | os.PathLike | None = None, *, verify: bool = False) -> EpisodeDataset:
    """A dataset artifact, read-only: ``ds.load()`` -> dict of numpy arrays (obs (N, O) float32,
    action (N, A), reward (N,), task (N,), episode_ends (E,)), ``ds.episode(i)`` for one episode.

    ``verify`` is off by default: re-hashing a dataset reads all of it (``pwmctl verify`` does it on
    demand); a Hub repo id (``datasets/ORG/NAME[@vN]``) is checked file by file as it is pulled.
    """
    from pwm_core.data import open_dataset as read_dataset
    from pwmctl.commands.collect import DATASET_DIR

    return read_dataset(resolve(ref, "dataset", home, verify=verify).path / DATASET_DIR)


def rollout(
    policy: Actor, task: str | None = None, seed: int = 0, episodes: int = 1, *, deterministic: bool = True
) -> list[float]:
    """Undiscounted returns of ``episodes`` episodes in the real env: the env is built with ``seed``
    and episode k is its k-th reset, as in ``pwmctl eval`` (same seed, same returns).

    ``task`` defaults to the policy's own (``policy.config["task"]``).
    """
    from pwm_core.envs.gym import make_gym_env

    if task is None:
        task = getattr(policy, "config", {}).get("task")
        if task is None:
            raise PwmError("rollout: name the task (this policy does not say which task it acts on)")
    if episodes < 1:
        raise PwmError(f"rollout: episodes must be >= 1, got {episodes}")
    env = make_gym_env(task, seed=seed)
    returns = []
    try:
        for _ in range(episodes):
            obs, _ = env.reset()
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(policy.act(obs, deterministic=deterministic))
                total += reward
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return returns


def _read(artifact: Artifact, device: Device) -> Any:
    """Load a policy or world-model artifact's folder (reports and datasets are no models)."""
    if artifact.kind == "policy":
        from pwm_core.policy import load_policy as read_policy

        return read_policy(artifact.path, device)
    if artifact.kind == "worldmodel":
        from pwm_core.nn.checkpoint import load_world_model as read_world_model

        return read_world_model(artifact.path, device)
    raise PwmError(
        f"{artifact.ref} is a {artifact.kind}, not a policy or world model: "
        f"use {_LOADER_OF.get(artifact.kind, 'resolve')}()"
    )


def _hub_endpoint(home: Path, endpoint: str | None) -> str:
    """As ``pwmctl pull``: the argument, $PWMCTL_HUB_ENDPOINT, config hub.endpoint, $HF_ENDPOINT, the Hub."""
    from pwmctl.commands.config import read_config
    from registry.hub import resolve_endpoint

    return resolve_endpoint(endpoint or os.environ.get("PWMCTL_HUB_ENDPOINT") or read_config(home).get("hub.endpoint"))
