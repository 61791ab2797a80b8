"""Evaluate policies in the real environments: every (task, seed, episode), in parallel lockstep.

An evaluation *unit* is one (actor, task, seed): an env built with that seed runs ``episodes``
episodes in a row (episode k is the env's k-th reset), so a result depends only on the actor, the
task, the seed and k, never on how units are batched or spread over worker processes, up to float
rounding: a matmul may round a row differently in another batch (~1e-7 in an action), which a long
chaotic episode can grow to a few tenths of a percent of its return. Units run
in waves of at most ``workers * envs_per_worker`` envs over one :class:`VectorEnv` per wave.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

import numpy as np

from pwm_core.envs import PaddedEnv, VectorEnv, lockstep, make_env
from pwm_core.errors import EnvError
from pwm_core.evaluate.stats import normalized_score
from pwm_core.render import video_problem
from pwm_core.tasks import TaskSpec, get_task

# A deterministic policy over a batch of envs: padded obs (N, O) and the N envs' tasks -> actions (N, A).
PlainActor = Callable[[np.ndarray, list[TaskSpec]], np.ndarray]


class EpisodicActor(Protocol):
    """An actor with memory across an episode's steps (e.g. MPPI's warm start), marked ``episodic = True``.

    Besides obs and tasks it gets ``envs`` (N,), ids of the rows' envs, fixed through an episode and distinct
    within a call, and ``first`` (N,) bool, True at each episode's first step.
    """

    episodic: bool

    def __call__(self, obs: np.ndarray, specs: list[TaskSpec], envs: np.ndarray, first: np.ndarray) -> np.ndarray: ...


Actor = PlainActor | EpisodicActor

ENVS_PER_WORKER = 16  # default envs per process: ~20-50 MB each (dm_control / Meta-World)
VIDEO_FPS = 30


@dataclass
class EpisodeResult:
    """One evaluation episode. ``score`` is normalised: DMC return / 1000, Meta-World final success."""

    task: str
    seed: int  # env seed
    episode: int  # k-th reset of that env, from 0
    ret: float  # undiscounted return
    length: int  # agent steps
    final_success: float  # info["success"] at the last step (0 for DMC)
    score: float
    seconds: float  # wall time from reset to the last step (shared with the envs stepped alongside)
    actor: str = "policy"


@dataclass
class Latency:
    """Wall time of an actor's calls, the first (warm-up: lazy init, CUDA context) excluded.

    A call returns one action for each env of a lockstep step, so its duration is the time each of those
    envs waits for its action; ``ms_per_action`` divides it among them.
    """

    calls: int = 0
    actions: int = 0  # env actions returned, summed over calls
    seconds: float = 0.0
    warmup_ms: float | None = None  # the first call
    call_ms: list[float] = field(default_factory=list, repr=False)  # each timed call

    def percentile_ms(self, q: float) -> float:
        """The q-th percentile (0-100) of the call durations, in ms."""
        return float(np.percentile(self.call_ms, q)) if self.call_ms else float("nan")

    @property
    def ms_per_call(self) -> float:
        return 1000 * self.seconds / self.calls if self.calls else float("nan")

    @property
    def ms_per_action(self) -> float:
        return 1000 * self.seconds / self.actions if self.actions else float("nan")

    def to_dict(self) -> dict:
        return {
            "calls": self.calls,
            "actions": self.actions,
            "ms_per_call": self.ms_per_call,
            "p50_ms_per_call": self.percentile_ms(50),
            "p95_ms_per_call": self.percentile_ms(95),
            "ms_per_action": self.ms_per_action,
            "warmup_ms": self.warmup_ms,
        }


@dataclass
class Video:
    """An mp4 of one episode, replayed in this process with the same actor and env seed."""

    actor: str
    task: str
    seed: int
    path: str
    ret: float  # return of the replayed episode (equals the evaluated one for a deterministic actor)


@dataclass
class Evaluation:
    """Everything :func:`evaluate` measured. ``episodes`` are ordered by actor, task, seed, episode
    (the orders given); ``video_note`` says why videos were not recorded (None if they were or
    none were asked for)."""

    episodes: list[EpisodeResult]
    latency: dict[str, Latency]
    videos: list[Video] = field(default_factory=list)
    video_note: str | None = None

    def by_actor(self) -> dict[str, list[EpisodeResult]]:
        out: dict[str, list[EpisodeResult]] = {label: [] for label in self.latency}
        for r in self.episodes:
            out[r.actor].append(r)
        return out


def random_actor(act_dim: int, seed: int = 0) -> Actor:
    """The random baseline: uniform in [-1, 1] on each task's own action dims, zeros in the padding.

    Each action is drawn from a generator seeded by (seed, task id, observation bytes), so the
    actor is a deterministic function of its input, like the policies it is compared with: results
    do not depend on how envs are batched.
    """

    def act(obs: np.ndarray, specs: list[TaskSpec]) -> np.ndarray:
        a = np.zeros((len(specs), act_dim), dtype=np.float32)
        for i, spec in enumerate(specs):
            entropy = [seed, spec.id, *np.ascontiguousarray(obs[i], np.float32).view(np.uint32).tolist()]
            a[i, : spec.act_dim] = np.random.default_rng(entropy).uniform(-1.0, 1.0, spec.act_dim)
        return a

    return act


@dataclass
class _Unit:
    actor: str
    spec: TaskSpec
    seed: int
    episodes_started: int = 0
    ret: float = 0.0
    length: int = 0
    start: float = 0.0


def evaluate(
    actors: Mapping[str, Actor] | Actor,
    tasks: Sequence[str],
    seeds: Sequence[int],
    episodes: int = 1,
    *,
    obs_dim: int | None = None,
    act_dim: int | None = None,
    workers: int = 1,
    envs_per_worker: int | None = None,
    on_episode: Callable[[EpisodeResult], None] | None = None,
    video_dir: str | Path | None = None,
    video_size: int = 384,
) -> Evaluation:
    """Run ``episodes`` episodes of every (actor, task, seed) in real envs; raw returns and success.

    Args:
        actors: one actor (labelled ``"policy"``) or ``{label: actor}``; each actor runs in lockstep
            waves of its own, one after the other.
        seeds: env seeds; seed s builds the env with seed s, episode k is its k-th reset.
        obs_dim, act_dim: the actors' padded widths (default: the largest among ``tasks``).
        workers, envs_per_worker: env processes, and envs per process (default 16); a wave holds
            at most ``workers * envs_per_worker`` envs.
        on_episode: called with each finished episode (e.g. for progress).
        video_dir: also write ``<actor>-<task>-seed<s>.mp4`` of the first episode (first seed) of
            each task, replayed in this process; needs headless OpenGL (MUJOCO_GL=egl|osmesa) and
            ``imageio`` + ``imageio-ffmpeg``. Failing that, ``Evaluation.video_note`` says why.

    An actor is a plain one (obs, tasks) -> actions or an :class:`EpisodicActor`, which is also told its
    envs and their episodes' first steps. Actor latency is measured per call (:class:`Latency`). Bad
    arguments raise :class:`EnvError`.
    """
    actor_map = dict(actors) if isinstance(actors, Mapping) else {"policy": actors}
    specs = [get_task(t) for t in tasks]
    seeds = [int(s) for s in seeds]
    _check_args(actor_map, tasks, seeds, episodes, workers, envs_per_worker)
    obs_dim = max(s.obs_dim for s in specs) if obs_dim is None else obs_dim
    act_dim = max(s.act_dim for s in specs) if act_dim is None else act_dim
    video_note = video_problem() if video_dir is not None else None  # before mujoco loads here

    keys = list(itertools.product(actor_map, specs, seeds))  # (actor, task, seed): the result order
    per_wave = workers * (envs_per_worker or ENVS_PER_WORKER)
    latency = {label: Latency() for label in actor_map}
    results: list[EpisodeResult] = []
    # Each actor runs in waves of its own: between two of its calls only the env step runs, so its latency is
    # not inflated by another actor's work evicting its weights from the caches (an MPPI call between two
    # policy calls made them ~1.5x slower).
    for label, actor in actor_map.items():
        units = [_Unit(label, spec, seed) for spec in specs for seed in seeds]
        units.sort(key=lambda u: -u.spec.episode_length)  # waves of equal-length episodes idle least
        for lo in range(0, len(units), per_wave):
            wave = units[lo : lo + per_wave]
            results += _run_wave(wave, actor, latency[label], episodes, obs_dim, act_dim, workers, on_episode)

    order = {(label, spec.name, seed): k for k, (label, spec, seed) in enumerate(keys)}
    results.sort(key=lambda r: (order[r.actor, r.task, r.seed], r.episode))
    evaluation = Evaluation(results, latency, video_note=video_note)
    if video_dir is not None and video_note is None:
        _record_videos(evaluation, actor_map, specs, seeds[0], obs_dim, act_dim, Path(video_dir), video_size)
    return evaluation


def _check_args(
    actors: dict[str, Actor],
    tasks: Sequence[str],
    seeds: list[int],
    episodes: int,
    workers: int,
    envs_per_worker: int | None,
) -> None:
    problems = []
    if not actors:
        problems.append("no actor given")
    if not tasks or len(set(tasks)) != len(tasks):
        problems.append(f"tasks must be distinct and non-empty, got {list(tasks)}")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        problems.append(f"seeds must be distinct, non-negative and non-empty, got {seeds}")
    if episodes < 1:
        problems.append(f"episodes must be >= 1, got {episodes}")
    if workers < 1 or (envs_per_worker is not None and envs_per_worker < 1):
        problems.append(f"workers and envs_per_worker must be >= 1, got {workers} and {envs_per_worker}")
    if problems:
        raise EnvError("cannot evaluate: " + "; ".join(problems))


def _run_wave(
    wave: list[_Unit],
    actor: Actor,
    latency: Latency,
    episodes: int,
    obs_dim: int,
    act_dim: int,
    workers: int,
    on_episode: Callable[[EpisodeResult], None] | None,
) -> list[EpisodeResult]:
    """Run every unit of ``wave`` (one actor's) for ``episodes`` episodes over one VectorEnv."""
    results: list[EpisodeResult] = []
    label = wave[0].actor

    def begin(i: int) -> bool:
        unit = wave[i]
        if unit.episodes_started == episodes:
            return False
        unit.episodes_started += 1
        unit.ret, unit.length, unit.start = 0.0, 0, time.perf_counter()
        return True

    def act(obs: np.ndarray, rows: np.ndarray) -> np.ndarray:
        first = np.array([wave[i].length == 0 for i in rows])  # wave index = env id
        return _timed_call(label, actor, obs, [wave[i].spec for i in rows], act_dim, latency, rows, first)

    with VectorEnv(
        [u.spec.name for u in wave], [u.seed for u in wave], obs_dim, act_dim, workers=min(workers, len(wave))
    ) as venv:
        for step in lockstep(venv, act, begin):
            for row, i in enumerate(step.rows):
                unit = wave[i]
                unit.ret += float(step.reward[row])
                unit.length += 1
                if step.done[row]:
                    success = float(step.success[row])
                    result = EpisodeResult(
                        unit.spec.name,
                        unit.seed,
                        unit.episodes_started - 1,
                        unit.ret,
                        unit.length,
                        success,
                        normalized_score(unit.spec, unit.ret, success),
                        time.perf_counter() - unit.start,
                        unit.actor,
                    )
                    results.append(result)
                    if on_episode is not None:
                        on_episode(result)
    return results


def _call(actor: Actor, obs: np.ndarray, specs: list[TaskSpec], envs: np.ndarray, first: np.ndarray) -> np.ndarray:
    # the `episodic` marker tells the two protocols apart at run time
    if getattr(actor, "episodic", False):
        return cast(EpisodicActor, actor)(obs, specs, envs, first)
    return cast(PlainActor, actor)(obs, specs)


def _timed_call(
    label: str,
    actor: Actor,
    obs: np.ndarray,
    specs: list[TaskSpec],
    act_dim: int,
    latency: Latency,
    envs: np.ndarray,
    first: np.ndarray,
) -> np.ndarray:
    t0 = time.perf_counter()
    a = np.asarray(_call(actor, obs, specs, envs, first), dtype=np.float32)
    dt = time.perf_counter() - t0
    if a.shape != (len(specs), act_dim):
        raise EnvError(f"actor {label!r} returned actions of shape {a.shape}, expected ({len(specs)}, {act_dim})")
    if latency.warmup_ms is None:
        latency.warmup_ms = 1000 * dt
    else:
        latency.calls += 1
        latency.actions += len(specs)
        latency.seconds += dt
        latency.call_ms.append(1000 * dt)
    return a


# --- videos ----------------------------------------------------------------------------------


def _record_videos(
    evaluation: Evaluation,
    actors: dict[str, Actor],
    specs: list[TaskSpec],
    seed: int,
    obs_dim: int,
    act_dim: int,
    video_dir: Path,
    size: int,
) -> None:
    """Replay the first episode of each (actor, task) with ``seed`` and write it as mp4."""
    video_dir.mkdir(parents=True, exist_ok=True)
    for label, actor in actors.items():
        for spec in specs:
            path = video_dir / f"{re.sub(r'[^A-Za-z0-9._-]', '_', label)}-{spec.name}-seed{seed}.mp4"
            try:
                ret = _record_episode(actor, spec, seed, obs_dim, act_dim, path, size)
            except Exception as e:  # a video is a by-product: never fail an evaluation over it
                path.unlink(missing_ok=True)  # no half-written file
                evaluation.video_note = f"video of {spec.name} failed: {type(e).__name__}: {e}"
                return
            evaluation.videos.append(Video(label, spec.name, seed, str(path), ret))


def _record_episode(
    actor: Actor, spec: TaskSpec, seed: int, obs_dim: int, act_dim: int, path: Path, size: int
) -> float:
    """Run one episode of ``spec`` with a fresh env seeded ``seed``, writing each frame; the return."""
    import imageio.v2 as imageio

    env = PaddedEnv(make_env(spec, seed), obs_dim, act_dim)
    try:
        writer = imageio.get_writer(path, fps=VIDEO_FPS, macro_block_size=1)
        with writer:  # imageio types `as` targets as its base class, without append_data
            obs, done, ret, first = env.reset(), False, 0.0, True
            writer.append_data(env.render(size, size))
            while not done:
                action = np.asarray(
                    _call(actor, obs[None], [spec], np.zeros(1, int), np.array([first])), dtype=np.float32
                )[0]
                first = False
                obs, reward, done, _ = env.step(action)
                ret += reward
                writer.append_data(env.render(size, size))
    finally:
        env.close()
    return ret
