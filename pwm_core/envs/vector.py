"""N padded envs stepped in lockstep, optionally spread over worker processes.

Each worker owns a contiguous slice of the envs and talks to the parent over a pipe. Workers are
started with ``spawn`` (a fork would copy the parent's torch / zarr threads in a broken state) and
are daemons that also exit when the parent's end of the pipe closes, so they never outlive it.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from pwm_core.envs.base import PaddedEnv, make_env
from pwm_core.errors import EnvError, PwmError
from pwm_core.tasks import TaskSpec, get_task

StepResult = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # obs, reward, done, success


@contextmanager
def _blame(task: str, seed: int) -> Iterator[None]:
    """Re-raise any failure as an EnvError that names the task."""
    try:
        yield
    except PwmError:
        raise
    except Exception as e:
        raise EnvError(f"{task} (seed {seed}): {type(e).__name__}: {e}") from e


class EnvGroup:
    """A slice of padded envs: the unit of work of one process."""

    def __init__(self, tasks: Sequence[str], seeds: Sequence[int], obs_dim: int, act_dim: int):
        self.tasks, self.seeds = list(tasks), list(seeds)
        self.envs: list[PaddedEnv] = []
        for task, seed in zip(self.tasks, self.seeds):
            with _blame(task, seed):
                self.envs.append(PaddedEnv(make_env(task, seed), obs_dim, act_dim))
        self.obs_dim = obs_dim

    def reset(self, indices: Sequence[int]) -> np.ndarray:
        """indices: local positions -> obs (len(indices), obs_dim) float32."""
        obs = np.zeros((len(indices), self.obs_dim), dtype=np.float32)
        for row, i in enumerate(indices):
            with _blame(self.tasks[i], self.seeds[i]):
                obs[row] = self.envs[i].reset()
        return obs

    def step(self, actions: np.ndarray) -> StepResult:
        """actions: (n, act_dim) -> obs (n, obs_dim) f32, reward (n,) f32, done (n,) bool, success (n,) f32."""
        n = len(self.envs)
        obs = np.zeros((n, self.obs_dim), dtype=np.float32)
        reward, done, success = np.zeros(n, np.float32), np.zeros(n, bool), np.zeros(n, np.float32)
        for i, env in enumerate(self.envs):
            with _blame(self.tasks[i], self.seeds[i]):
                obs[i], reward[i], done[i], info = env.step(actions[i])
                success[i] = info["success"]
        return obs, reward, done, success

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _worker(conn: Connection, tasks: list[str], seeds: list[int], obs_dim: int, act_dim: int) -> None:
    """Serve ("reset" | "step" | "close", arg) commands; reply ("ok" | "error", payload)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it saves work, then closes us
    try:
        group = EnvGroup(tasks, seeds, obs_dim, act_dim)
    except Exception as e:
        conn.send(("error", _describe(e)))
        return
    conn.send(("ok", None))
    try:
        while True:
            command, arg = conn.recv()
            if command == "close":
                break
            try:
                conn.send(("ok", getattr(group, command)(arg)))
            except Exception as e:  # reported to the parent; the worker keeps serving
                conn.send(("error", _describe(e)))
    except (EOFError, KeyboardInterrupt):  # the parent is gone or interrupted: just exit
        pass
    finally:
        group.close()


def _describe(e: Exception) -> str:
    return str(e) if isinstance(e, PwmError) else traceback.format_exc()


class _InProcess:
    """The envs in this process; same submit / result protocol as a worker."""

    def __init__(self, tasks: list[str], seeds: list[int], obs_dim: int, act_dim: int):
        self.group = EnvGroup(tasks, seeds, obs_dim, act_dim)
        self._result: Any = None

    def submit(self, command: str, arg: Any) -> None:
        self._result = getattr(self.group, command)(arg)

    def result(self) -> Any:
        return self._result

    def close(self) -> None:
        self.group.close()


class _Worker:
    """Handle on a worker process; construction is awaited by the first :meth:`result`."""

    def __init__(self, ctx: Any, tasks: list[str], seeds: list[int], obs_dim: int, act_dim: int):
        self.tasks = tasks
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker, args=(child_conn, tasks, seeds, obs_dim, act_dim), daemon=True, name=f"pwm-env-{tasks[0]}"
        )
        self.process.start()
        child_conn.close()  # so a dead worker reads as EOF here

    def submit(self, command: str, arg: Any) -> None:
        self.conn.send((command, arg))

    def result(self) -> Any:
        try:
            status, payload = self.conn.recv()
        except EOFError:
            self.process.join(timeout=1)
            raise EnvError(f"env worker for {', '.join(self.tasks)} died (exit code {self.process.exitcode})") from None
        if status == "error":
            raise EnvError(payload)
        return payload

    def close(self) -> None:
        try:
            self.conn.send(("close", None))
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.terminate()
        self.conn.close()


class VectorEnv:
    """N envs stepped in lockstep, spread over ``workers`` processes (workers=1: in-process).

    Observations are zero-padded to ``obs_dim``, actions are ``act_dim`` wide (TD-MPC2 multi-task
    padding). No auto-reset: the caller resets envs whose episode ended. A failing env raises an
    :class:`EnvError` naming its task; the other envs stay usable.
    """

    def __init__(self, tasks: Sequence[str], seeds: Sequence[int], obs_dim: int, act_dim: int, workers: int = 1):
        if len(tasks) != len(seeds) or not tasks:
            raise EnvError(
                f"need one seed per task and at least one task, got {len(tasks)} tasks and {len(seeds)} seeds"
            )
        if workers < 1:
            raise EnvError(f"workers must be >= 1, got {workers}")
        self.specs: list[TaskSpec] = [get_task(t) for t in tasks]  # unknown names fail here
        self.num_envs, self.obs_dim, self.act_dim = len(tasks), obs_dim, act_dim
        tasks, seeds = list(tasks), [int(s) for s in seeds]
        # Worker w owns envs [bounds[w], bounds[w+1]); never more workers than envs.
        sizes = [len(a) for a in np.array_split(np.arange(self.num_envs), workers) if len(a)]
        self._bounds: list[int] = [0, *np.cumsum(sizes).tolist()]
        self._workers: list[_InProcess | _Worker] = []
        if workers == 1:
            self._workers.append(_InProcess(tasks, seeds, obs_dim, act_dim))
            return
        ctx = mp.get_context("spawn")
        try:
            for lo, hi in zip(self._bounds[:-1], self._bounds[1:]):
                self._workers.append(_Worker(ctx, tasks[lo:hi], seeds[lo:hi], obs_dim, act_dim))
            self._gather(list(range(len(self._workers))))  # wait for every env to be built
        except BaseException:
            self.close()
            raise

    def _gather(self, worker_ids: list[int]) -> list[Any]:
        """Results of the given workers; reads them all before raising the first error."""
        results, error = [], None
        for w in worker_ids:
            try:
                results.append(self._workers[w].result())
            except EnvError as e:
                error = error or e
        if error is not None:
            raise error
        return results

    def reset(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Reset the given envs (all by default) -> obs (len(indices), obs_dim) float32, in that order."""
        indices = list(range(self.num_envs)) if indices is None else [int(i) for i in indices]
        if len(set(indices)) != len(indices) or any(not 0 <= i < self.num_envs for i in indices):
            raise EnvError(f"reset indices must be distinct and in [0, {self.num_envs}), got {indices}")
        rows: dict[int, list[int]] = {}  # worker -> positions in `indices`
        for pos, i in enumerate(indices):
            rows.setdefault(int(np.searchsorted(self._bounds, i, side="right")) - 1, []).append(pos)
        for w, positions in rows.items():
            self._workers[w].submit("reset", [indices[p] - self._bounds[w] for p in positions])
        obs = np.zeros((len(indices), self.obs_dim), dtype=np.float32)
        for positions, worker_obs in zip(rows.values(), self._gather(list(rows))):
            obs[positions] = worker_obs
        return obs

    def step(self, actions: np.ndarray) -> StepResult:
        """actions: (N, act_dim) -> obs (N, obs_dim) f32, reward (N,) f32, done (N,) bool, success (N,) f32."""
        actions = np.asarray(actions, dtype=np.float32)
        if actions.shape != (self.num_envs, self.act_dim):
            raise EnvError(f"actions must have shape ({self.num_envs}, {self.act_dim}), got {actions.shape}")
        for w, worker in enumerate(self._workers):
            worker.submit("step", actions[self._bounds[w] : self._bounds[w + 1]])
        parts = self._gather(list(range(len(self._workers))))
        obs, reward, done, success = (np.concatenate(p) for p in zip(*parts))
        return obs, reward, done, success

    def close(self) -> None:
        for worker in self._workers:
            worker.close()
        self._workers = []

    def __enter__(self) -> VectorEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
