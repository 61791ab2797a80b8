"""Task specifications and the TD-MPC2 task sets MT30 / MT80.

A task's id is its position in MT80 (TD-MPC2's ``TASK_SET`` order, MT30 is its first 30 entries); the
differentiable-simulator tasks (suite ``diffsim``, :mod:`pwm_core.diffsim`) follow with ids 80..82.
Datasets store these global ids; a :class:`TaskSet` maps them to the rows of a model's task
embedding (for ``mt30`` / ``mt80`` the two coincide).
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from typing import Literal

from pwm_core.errors import PwmError

Suite = Literal["dmc", "metaworld", "diffsim"]

DMC_EPISODE_LENGTH = 500  # agent decisions (1000 control steps, action repeat 2)
MW_EPISODE_LENGTH = 100  # agent decisions (200 Meta-World steps, action repeat 2)
ACTION_REPEAT = 2


def discount_for_length(episode_length: int) -> float:
    """TD-MPC2's per-task discount: clip((L/5 - 1) / (L/5), 0.95, 0.995); 0.99 for DMC, 0.95 for MW."""
    frac = episode_length / 5
    return min(max((frac - 1) / frac, 0.95), 0.995)


@dataclass(frozen=True)
class TaskSpec:
    """One task as the agent sees it (after action repeat and flattening)."""

    id: int  # global id: position in MT80
    name: str  # e.g. "walker-walk", "mw-reach"
    suite: Suite
    obs_dim: int
    act_dim: int
    episode_length: int  # agent decisions per episode; stored episodes have one more row
    action_repeat: int = ACTION_REPEAT

    @property
    def discount(self) -> float:
        return discount_for_length(self.episode_length)

    @property
    def custom(self) -> bool:
        """True for the 11 TD-MPC2 custom dm_control tasks."""
        return self.name in CUSTOM_DMC_TASKS

    def to_dict(self) -> dict:
        return asdict(self)


# (name, obs_dim, act_dim) in TD-MPC2 id order.
_DMC: tuple[tuple[str, int, int], ...] = (
    ("walker-stand", 24, 6),
    ("walker-walk", 24, 6),
    ("walker-run", 24, 6),
    ("cheetah-run", 17, 6),
    ("reacher-easy", 6, 2),
    ("reacher-hard", 6, 2),
    ("acrobot-swingup", 6, 1),
    ("pendulum-swingup", 3, 1),
    ("cartpole-balance", 5, 1),
    ("cartpole-balance-sparse", 5, 1),
    ("cartpole-swingup", 5, 1),
    ("cartpole-swingup-sparse", 5, 1),
    ("cup-catch", 8, 2),
    ("finger-spin", 9, 2),
    ("finger-turn-easy", 12, 2),
    ("finger-turn-hard", 12, 2),
    ("fish-swim", 24, 5),
    ("hopper-stand", 15, 4),
    ("hopper-hop", 15, 4),
    ("walker-walk-backwards", 24, 6),
    ("walker-run-backwards", 24, 6),
    ("cheetah-run-backwards", 17, 6),
    ("cheetah-run-front", 17, 6),
    ("cheetah-run-back", 17, 6),
    ("cheetah-jump", 17, 6),
    ("hopper-hop-backwards", 15, 4),
    ("reacher-three-easy", 8, 3),
    ("reacher-three-hard", 8, 3),
    ("cup-spin", 8, 2),
    ("pendulum-spin", 3, 1),
)

CUSTOM_DMC_TASKS = frozenset(name for name, _, _ in _DMC[19:])

# Meta-World MT50 in TD-MPC2 id order (ids 30..79); all obs 39, act 4.
_MW: tuple[str, ...] = (
    "assembly", "basketball", "button-press-topdown", "button-press-topdown-wall", "button-press",
    "button-press-wall", "coffee-button", "coffee-pull", "coffee-push", "dial-turn",
    "disassemble", "door-open", "door-close", "drawer-close", "drawer-open",
    "faucet-open", "faucet-close", "hammer", "handle-press-side", "handle-press",
    "handle-pull-side", "handle-pull", "lever-pull", "peg-insert-side", "peg-unplug-side",
    "pick-out-of-hole", "pick-place", "pick-place-wall", "plate-slide", "plate-slide-side",
    "plate-slide-back", "plate-slide-back-side", "push-back", "push", "push-wall",
    "reach", "reach-wall", "shelf-place", "soccer", "stick-push",
    "stick-pull", "sweep-into", "sweep", "window-open", "window-close",
    "bin-picking", "box-close", "door-lock", "door-unlock", "hand-insert",
)  # fmt: skip

TASKS: dict[str, TaskSpec] = {}
for _i, (_name, _o, _a) in enumerate(_DMC):
    TASKS[_name] = TaskSpec(_i, _name, "dmc", _o, _a, DMC_EPISODE_LENGTH)
for _j, _name in enumerate(_MW):
    TASKS[f"mw-{_name}"] = TaskSpec(len(_DMC) + _j, f"mw-{_name}", "metaworld", 39, 4, MW_EPISODE_LENGTH)
# The differentiable-simulator tasks of pwm_core.diffsim (ids after MT80; in no task set; action repeat 1).
# They mirror pwm_core.diffsim.env.DIFFSIM_TASKS, which needs Warp to import (tests/test_diffsim.py checks they agree).
for _k, (_name, _o, _a, _len) in enumerate(
    (("diffsim-cartpole-swingup", 5, 1, 240), ("diffsim-double-pendulum", 6, 1, 240), ("diffsim-ball-wall", 4, 1, 1))
):
    TASKS[_name] = TaskSpec(80 + _k, _name, "diffsim", _o, _a, _len, action_repeat=1)

TASKS_BY_ID: dict[int, TaskSpec] = {t.id: t for t in TASKS.values()}

MT30: tuple[str, ...] = tuple(name for name, _, _ in _DMC)
MT80: tuple[str, ...] = MT30 + tuple(f"mw-{n}" for n in _MW)
TASK_SET_NAMES: dict[str, tuple[str, ...]] = {"mt30": MT30, "mt80": MT80}


class UnknownTaskError(PwmError):
    """A task or task-set name that is not known; the message suggests the closest names."""


@dataclass(frozen=True)
class TaskSet:
    """An ordered set of tasks sharing one padded observation / action space.

    ``tasks[i]`` is embedding row ``i``; ``obs_dim`` / ``act_dim`` are the maxima over the members
    (MT30: 24 / 6, MT80: 39 / 6), as TD-MPC2's multi-task wrapper pads them.
    """

    name: str
    tasks: tuple[TaskSpec, ...]

    @property
    def obs_dim(self) -> int:
        return max(t.obs_dim for t in self.tasks)

    @property
    def act_dim(self) -> int:
        return max(t.act_dim for t in self.tasks)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(t.id for t in self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        return iter(self.tasks)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def index(self, task: str | int) -> int:
        """Embedding row of a task given by name or global id."""
        key = task if isinstance(task, str) else TASKS_BY_ID[int(task)].name
        return self.names.index(key)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "tasks": [t.to_dict() for t in self.tasks],
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
        }


def get_task(name: str) -> TaskSpec:
    """Look a task up by name; unknown names raise :class:`UnknownTaskError` with a suggestion."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(_unknown_message(name)) from None


def resolve_tasks(spec: str | list[str] | tuple[str, ...]) -> TaskSet:
    """``"mt30"`` | ``"mt80"`` | ``"walker-walk,cheetah-run"`` (or a list of names) -> TaskSet.

    A comma-separated list keeps its order and drops duplicates; it may mix in ``mt30``.
    """
    parts = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec)]
    parts = [p for p in parts if p]
    if not parts:
        raise UnknownTaskError("no task given; name a task (e.g. walker-walk) or a set (mt30, mt80)")
    if len(parts) == 1 and parts[0].lower() in TASK_SET_NAMES:
        key = parts[0].lower()
        return TaskSet(key, tuple(TASKS[n] for n in TASK_SET_NAMES[key]))
    names: list[str] = []
    for p in parts:
        members = TASK_SET_NAMES.get(p.lower(), (get_task(p).name,))
        names.extend(n for n in members if n not in names)
    return TaskSet(",".join(parts) if len(parts) > 1 else parts[0], tuple(TASKS[n] for n in names))


def _unknown_message(name: str) -> str:
    candidates = list(TASKS) + list(TASK_SET_NAMES)
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    hint = (
        f"did you mean {' or '.join(repr(c) for c in close)}?"
        if close
        else ("run `pwmctl tasks` to list the known tasks")
    )
    return f"unknown task {name!r}: {hint}"
