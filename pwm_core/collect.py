"""Roll out a behaviour policy in real environments and append whole episodes to a dataset.

Episodes run in lockstep over a :class:`~pwm_core.envs.VectorEnv` (one or more worker processes);
each finished episode is committed to the dataset at once, so an interrupted collection keeps every
episode it finished.

Determinism and resume: episode ``e`` of a task always runs on the same env slot at the same point of
that slot's stream of resets (slot ``e mod c``, its reset ``e div c``, for the task's ``c`` slots), and
the behaviour policy's noise for it is drawn from a generator seeded with (seed, task id, e). A collection
resumed with ``done`` (episodes already committed) lays the slots out as the uninterrupted run did, skips
each env ahead by its finished rounds and replays, without recording, the committed episodes of a
half-finished round: it records exactly the episodes the uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pwm_core.data import EpisodeWriter
from pwm_core.envs import VectorEnv, lockstep, random_action
from pwm_core.errors import PwmError
from pwm_core.tasks import TaskSet, TaskSpec

# A behaviour policy maps padded observations (N, O) and the tasks of the N envs to actions (N, A).
# An episodic one (``episodic = True``) also gets the env slot of each row, which rows start an episode,
# and each row's episode as (task id, episode index): ``policy(obs, specs, rows, first, episodes)``; its
# noise is a function of the episode, never of the slot or of the other rows.
BehaviourPolicy = Callable[..., np.ndarray]


@dataclass
class EpisodeStats:
    task: str
    ret: float  # undiscounted return
    steps: int
    success: float  # final-step success (Meta-World), 0 for DMC


@dataclass
class CollectResult:
    episodes: list[EpisodeStats] = field(default_factory=list)
    env_steps: int = 0
    interrupted: bool = False


NOISES = ("uniform", "pink")


def random_policy(seed: int, act_dim: int, noise: str = "uniform") -> BehaviourPolicy:
    """Random actions on each task's own dims, zeros in the padded ones: ``uniform`` in [-1, 1] at every
    step (TD-MPC2's seeding), or ``pink`` (temporally correlated, :class:`PinkNoisePolicy`). Episodic:
    episode e of a task draws from a generator seeded with (seed, task id, e)."""
    if noise not in NOISES:
        raise ValueError(f"unknown noise {noise!r}: use one of {', '.join(NOISES)}")
    return PinkNoisePolicy(seed, act_dim) if noise == "pink" else UniformPolicy(seed, act_dim)


def episode_rng(seed: int, episode: tuple[int, int]) -> np.random.Generator:
    """The generator of one episode's noise: seeded with (run seed, task id, episode index)."""
    return np.random.default_rng([seed, *episode])


class UniformPolicy:
    """Uniform random actions in [-1, 1] on the task's dims, a new draw every step (TD-MPC2's seeding)."""

    episodic = True

    def __init__(self, seed: int, act_dim: int) -> None:
        self.seed, self.act_dim = seed, act_dim
        self._rngs: dict[int, np.random.Generator] = {}  # env slot -> its current episode's generator

    def __call__(
        self,
        obs: np.ndarray,
        specs: list[TaskSpec],
        rows: np.ndarray,
        first: np.ndarray,
        episodes: list[tuple[int, int]],
    ) -> np.ndarray:
        out = np.zeros((len(obs), self.act_dim), np.float32)
        for j, (row, spec) in enumerate(zip(rows.tolist(), specs)):
            if first[j] or row not in self._rngs:
                self._rngs[row] = episode_rng(self.seed, episodes[j])
            out[j] = random_action(spec, self._rngs[row], self.act_dim)
        return out


def pink_noise(rng: np.random.Generator, length: int, dims: int, beta: float = 1.0) -> np.ndarray:
    """(length, dims) Gaussian noise with power spectrum 1/f^beta (beta 1: pink), unit variance per dim.

    Drawn in the frequency domain: complex white noise scaled by f^(-beta/2), inverse real FFT
    (Eberhard et al. 2023, "Pink noise is all you need"). Its low frequencies make random actions
    persist, so random episodes swing, spin and travel far more than with white noise.
    """
    f = np.fft.rfftfreq(length)
    f[0] = f[1] if length > 1 else 1.0  # no infinite power at f = 0
    spectrum = (rng.standard_normal((dims, f.size)) + 1j * rng.standard_normal((dims, f.size))) * f ** (-beta / 2)
    x = np.fft.irfft(spectrum, n=length, axis=-1)
    x = x - x.mean(-1, keepdims=True)
    return (x / np.maximum(x.std(-1, keepdims=True), 1e-8)).T


class PinkNoisePolicy:
    """Random actions clip(pink noise, -1, 1), one noise sequence per episode, drawn from the episode's
    generator (:func:`episode_rng`).

    Measured on random episodes (6 seeds): cartpole-swingup return 180 vs 60 (uniform), cup-catch 183
    vs 0, cheetah-run 21 vs 5.5.
    """

    episodic = True

    def __init__(self, seed: int, act_dim: int, beta: float = 1.0) -> None:
        self.seed, self.act_dim, self.beta = seed, act_dim, beta
        self._seq: dict[int, np.ndarray] = {}  # env slot -> its current episode's noise, and the step
        self._t: dict[int, int] = {}

    def __call__(
        self,
        obs: np.ndarray,
        specs: list[TaskSpec],
        rows: np.ndarray,
        first: np.ndarray,
        episodes: list[tuple[int, int]],
    ) -> np.ndarray:
        out = np.zeros((len(obs), self.act_dim), np.float32)
        for j, (row, spec) in enumerate(zip(rows.tolist(), specs)):
            if first[j] or row not in self._seq:
                rng = episode_rng(self.seed, episodes[j])
                self._seq[row] = pink_noise(rng, spec.episode_length, spec.act_dim, self.beta)
                self._t[row] = 0
            t = min(self._t[row], len(self._seq[row]) - 1)
            out[j, : spec.act_dim] = np.clip(self._seq[row][t], -1.0, 1.0)
            self._t[row] += 1
        return out


def check_policy_dims(config: dict, task_set: TaskSet) -> None:
    """A PwmError unless a policy's task is in ``task_set`` with the observation and action widths the
    policy was built for (its ``task_obs_dim`` / ``task_act_dim``), as evaluation requires."""
    task = config.get("task")
    spec = next((t for t in task_set if t.name == task), None)
    if spec is None:
        raise PwmError(
            f"the policy acts on {task!r}, which is not among the tasks collected ({', '.join(task_set.names)})"
        )
    got = (config.get("task_obs_dim"), config.get("task_act_dim"))
    if got != (spec.obs_dim, spec.act_dim) or config.get("obs_dim", 0) < spec.obs_dim:
        raise PwmError(
            f"the policy for {task} takes obs {got[0]} / act {got[1]}, but {task} has obs "
            f"{spec.obs_dim} / act {spec.act_dim}; it was built for another version of the "
            "task: extract a policy for this one"
        )


def learned_policy(policy, seed: int, act_dim: int) -> BehaviourPolicy:
    """An extracted :class:`~pwm_core.train.Policy` as an episodic behaviour policy: stochastic actions
    (tanh of its Gaussian, the exploration noise), zero-padded to the dataset's action width ``act_dim``.

    Step t of episode e draws its noise from torch's generator seeded with (seed, task id, e, t), so an
    episode's actions do not depend on which other envs share the batch (one policy call per env).
    """
    import torch

    obs_dim = policy.config["task_obs_dim"]
    t: dict[int, int] = {}  # env slot -> step into its episode

    def act(
        obs: np.ndarray, specs: list[TaskSpec], rows: np.ndarray, first: np.ndarray, episodes: list[tuple[int, int]]
    ) -> np.ndarray:
        out = np.zeros((len(obs), act_dim), np.float32)
        for j, row in enumerate(rows.tolist()):
            t[row] = 0 if first[j] or row not in t else t[row] + 1
            with torch.random.fork_rng(devices=[]):  # Policy.act samples from torch's global generator
                torch.manual_seed(int(np.random.SeedSequence([seed, *episodes[j], t[row]]).generate_state(1)[0]))
                a = policy.act(obs[j : j + 1, :obs_dim], deterministic=False)  # the policy pads to its width
            out[j, : a.shape[1]] = a[0]
        return out

    act.episodic = True  # type: ignore[attr-defined]
    return act


def collect(
    writer: EpisodeWriter,
    todo: dict[str, int],
    task_set: TaskSet,
    policy: BehaviourPolicy,
    seed: int = 0,
    workers: int = 1,
    envs_per_worker: int | None = None,
    on_episode: Callable[[EpisodeStats], None] | None = None,
    done: dict[str, int] | None = None,
) -> CollectResult:
    """Collect ``todo[task]`` episodes of each task into ``writer``.

    Observations are padded to ``task_set.obs_dim`` and actions to ``task_set.act_dim`` (the
    dataset's padding). Each env slot is bound to one task; a task gets as many slots as it has
    episodes, up to ``workers * envs_per_worker`` slots in total (default: 1 env in-process,
    4 per worker process, to amortise the pipe round trip of each step). Ctrl-C (KeyboardInterrupt)
    stops after the episodes already committed; the result says so.

    ``done[task]``: episodes of this collection committed by an earlier, interrupted call (resume). The
    call then records the episodes ``done[task]``.. of the uninterrupted one, identical to what it would
    have recorded (same seed, ``workers`` and ``envs_per_worker``; see the module doc).
    """
    if envs_per_worker is None:
        envs_per_worker = 1 if workers == 1 else 4
    done = {t: done.get(t, 0) for t in todo} if done else dict.fromkeys(todo, 0)
    total = {t: done[t] + n for t, n in todo.items() if n > 0}  # the uninterrupted run's episodes
    slots = _assign_slots(total, max(1, workers * envs_per_worker))
    result = CollectResult()
    if not slots:
        return result
    tasks = [t for t, _ in slots]
    width = {t: sum(1 for u in tasks if u == t) for t in total}  # c: slots of each task
    seeds = [seed * 10_007 + i for i in range(len(slots))]
    venv = VectorEnv(tasks, seeds, task_set.obs_dim, task_set.act_dim, workers=min(workers, len(slots)))
    specs = venv.specs
    # Episode e of a task runs on its slot k = e mod c in round e div c (the slot's (e div c)-th reset).
    # A resumed task starts at its first unfinished round: every env skips the rounds before it.
    rounds = [done[t] // width[t] for t in tasks]
    episode_of: list[int | None] = [None] * len(slots)
    episodes: list[_Episode | None] = [None] * len(slots)

    def begin(i: int) -> bool:  # slot i takes its next round's episode, if the task has one
        e = rounds[i] * width[tasks[i]] + slots[i][1]
        rounds[i] += 1
        episode_of[i] = e
        return e < total[tasks[i]]

    def act(obs: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if getattr(policy, "episodic", False):
            keys = [(specs[i].id, episode_of[i]) for i in rows]
            return policy(obs, [specs[i] for i in rows], rows, np.array([episodes[i] is None for i in rows]), keys)
        return policy(obs, [specs[i] for i in rows])

    try:
        for t in set(tasks):  # skip ahead: the resets of the rounds finished before this call
            mine = [i for i, u in enumerate(tasks) if u == t]
            for _ in range(rounds[mine[0]]):
                venv.reset(mine)
        for step in lockstep(venv, act, begin):
            result.env_steps += len(step.rows)
            for j, i in enumerate(step.rows):
                ep = episodes[i] = episodes[i] or _Episode(step.obs[j])
                ep.add(step.next_obs[j], step.action[j], step.reward[j], step.success[j])
                if step.done[j]:
                    episodes[i] = None
                    if episode_of[i] < done[tasks[i]]:  # committed before the resume: replayed, not recorded
                        continue
                    writer.append_episode(
                        np.stack(ep.obs),
                        np.stack(ep.action),  # the whole episode at once
                        np.asarray(ep.reward, np.float32),
                        specs[i].id,
                    )
                    stats = EpisodeStats(tasks[i], float(np.sum(ep.reward)), len(ep.reward), ep.success)
                    result.episodes.append(stats)
                    if on_episode is not None:
                        on_episode(stats)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        venv.close()
    return result


class _Episode:
    """Rows of one episode in TD-MPC2 alignment: obs[0..L], action[1..L], reward[1..L]."""

    def __init__(self, obs0: np.ndarray):
        self.obs: list[np.ndarray] = [obs0.copy()]
        self.action: list[np.ndarray] = []
        self.reward: list[float] = []
        self.success = 0.0

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float, success: float) -> None:
        self.obs.append(obs.copy())
        self.action.append(np.asarray(action, np.float32).copy())
        self.reward.append(float(reward))
        self.success = float(success)


def _assign_slots(todo: dict[str, int], n_slots: int) -> list[tuple[str, int]]:
    """Spread env slots over tasks: every task gets one, extra slots go to tasks with most work."""
    if not todo:
        return []
    counts = {t: 1 for t in todo}
    for _ in range(max(0, n_slots - len(todo))):
        t = max(todo, key=lambda k: todo[k] / counts[k])
        if todo[t] <= counts[t]:
            break
        counts[t] += 1
    return [(t, k) for t in todo for k in range(counts[t])]
