"""The one training loop: callbacks in order, checkpoints by steps / wall time / signal, live metrics, status."""

from __future__ import annotations

import os
import signal
import time

import pytest

from pwm_core.train.loop import (
    Checkpoint,
    Every,
    JsonlMetrics,
    KeepBest,
    Loop,
    LoopState,
    RunStatus,
    TensorBoardMetrics,
    TimeBudget,
    load_best,
    read_best,
    read_jsonl,
    read_status,
    run_callbacks,
)


class Counter:
    """A trainer whose step k returns loss 1/k; optionally sends itself a signal at one step."""

    def __init__(self, signal_at: int | None = None, signum: int = signal.SIGHUP, sleep: float = 0.0):
        self.n, self.signal_at, self.signum, self.sleep = 0, signal_at, signum, sleep

    def step(self) -> dict[str, float]:
        self.n += 1
        if self.n == self.signal_at:
            os.kill(os.getpid(), self.signum)  # delivered now: the handler runs before step() returns
        time.sleep(self.sleep)
        return {"loss": 1.0 / self.n}


class Record:
    def __init__(self):
        self.events: list[tuple[str, int]] = []

    def on_start(self, s: LoopState):
        self.events.append(("start", s.step))

    def on_step(self, s: LoopState):
        self.events.append(("step", s.step))

    def on_interrupt(self, s: LoopState):
        self.events.append(("interrupt", s.step))

    def on_end(self, s: LoopState):
        self.events.append(("end", s.step))


def test_loop_runs_to_total_and_calls_back_in_order():
    c, rec, saved = Counter(), Record(), []
    every = Every(2, lambda: {"val": c.n * 10.0}, prefix="v/")
    result = Loop(
        c.step, lambda: c.n, 5, [every, Checkpoint(lambda: saved.append(c.n), every_steps=2, every_s=0), rec]
    ).run()
    assert not result.interrupted and c.n == 5
    assert rec.events == [("start", 0), *[("step", k) for k in range(1, 6)], ("end", 5)]
    assert saved == [2, 4, 5]  # every 2 steps, then at the end
    assert result.state.metrics == {"loss": 0.2, "v/val": 50.0}  # at_end: the last step is evaluated too
    assert every.last == {"val": 50.0}


def test_a_resumed_loop_starts_at_the_trainers_position():
    c, rec = Counter(), Record()
    c.n = 3
    Loop(c.step, lambda: c.n, 5, [rec]).run()
    assert rec.events == [("start", 3), ("step", 4), ("step", 5), ("end", 5)]


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_after_the_current_step_and_checkpoints(signum):
    c, rec, saved = Counter(signal_at=3, signum=signum), Record(), []
    before = signal.getsignal(signum)
    result = Loop(c.step, lambda: c.n, 100, [Checkpoint(lambda: saved.append(c.n), every_s=0), rec]).run()
    assert result.interrupted and result.signal == signum
    assert c.n == 3 and saved == [3]  # the whole step 3 ran; its state was saved once
    assert rec.events[-2:] == [("step", 3), ("interrupt", 3)]
    assert signal.getsignal(signum) is before  # handlers restored


def test_other_ranks_stop_with_the_signalled_one():
    c, asked = Counter(), []

    def agree(flag):  # as distributed.any_rank: rank 1 was signalled before step 3
        asked.append(flag)
        return len(asked) >= 3

    result = Loop(c.step, lambda: c.n, 10, [], agree=agree).run()
    assert result.interrupted and c.n == 2 and result.signal == -1


def test_checkpoint_by_wall_time():
    c, saved = Counter(sleep=0.03), []
    Loop(
        c.step, lambda: c.n, 10, [Checkpoint(lambda: saved.append(c.n), every_steps=0, every_s=0.1, at_end=False)]
    ).run()
    assert 2 <= len(saved) <= 4 and saved == sorted(saved) and saved[-1] < 10  # ~every 4th step of 30 ms


def test_jsonl_metrics_are_written_live_and_a_resume_drops_rows_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    c = Counter()
    seen_during = []
    sink = JsonlMetrics(path, every=2)

    class Peek:
        def on_step(self, s):
            seen_during.append(len(read_jsonl(path)) if path.exists() else 0)

        on_start = on_interrupt = on_end = lambda self, s: None

    Loop(c.step, lambda: c.n, 6, [sink, Peek()]).run()
    rows = read_jsonl(path)
    assert [r["step"] for r in rows] == [2, 4, 6] and rows[0]["loss"] == pytest.approx(0.5)
    assert seen_during == [0, 1, 1, 2, 2, 3]  # on disk as soon as logged
    with open(path, "a") as f:
        f.write('{"step": 7, "loss"')  # a torn line from a killed writer
    c.n = 4  # resumed from a checkpoint at step 4
    Loop(c.step, lambda: c.n, 6, [JsonlMetrics(path, every=2)]).run()
    assert [r["step"] for r in read_jsonl(path)] == [2, 4, 6]


def test_evaluations_are_logged_whatever_the_log_interval(tmp_path):
    c = Counter()
    callbacks = [Every(3, lambda: {"eval_return": 1.5}), JsonlMetrics(tmp_path / "m.jsonl", 100)]
    Loop(c.step, lambda: c.n, 5, callbacks).run()
    assert [(r["step"], "eval_return" in r) for r in read_jsonl(tmp_path / "m.jsonl")] == [(3, True), (5, True)]


def test_run_status_tells_another_process_where_the_run_is(tmp_path):
    c = Counter(signal_at=4)
    status_during = []

    class Peek:
        def on_step(self, s):
            status_during.append(read_status(tmp_path)["state"])

        on_start = on_interrupt = on_end = lambda self, s: None

    Loop(c.step, lambda: c.n, 10, [RunStatus(tmp_path, "pretrain", every_s=0), Peek()]).run()
    status = read_status(tmp_path)
    assert status_during == ["running"] * 4
    assert status["state"] == "interrupted" and status["step"] == 4 and status["total"] == 10
    assert status["pid"] == os.getpid() and status["metrics"]["loss"] == pytest.approx(0.25)
    Loop(c.step, lambda: c.n, 10, [RunStatus(tmp_path, "pretrain")]).run()
    assert read_status(tmp_path)["state"] == "finished"


def test_tensorboard_event_files_hold_the_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    c = Counter()
    Loop(
        c.step,
        lambda: c.n,
        4,
        [Every(2, lambda: {"return": 7.0}, prefix="val/"), TensorBoardMetrics(tmp_path / "tb", every=1)],
    ).run()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("loss")] == [(k, round(1 / k, 6)) for k in range(1, 5)]
    assert [e.step for e in events.Scalars("val/return")] == [2, 4]


def test_wandb_runs_offline_by_default_and_records_the_metrics(tmp_path, monkeypatch):
    """--logger wandb with no W&B account: an offline run folder (for `wandb sync`) holding every metric."""
    pytest.importorskip("wandb")
    from pwm_core.train.loop import WandbMetrics

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    c = Counter()
    sink = WandbMetrics(tmp_path / "wandb", "run-x", {"horizon_marker": 1234567}, every=1)
    Loop(c.step, lambda: c.n, 4, [Every(2, lambda: {"return": 7.5}, prefix="val/"), sink]).run()
    sink.close()
    assert os.environ["WANDB_MODE"] == "offline"
    runs = list((tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "wandb").rglob("*"))
    (log,) = runs[0].glob("run-*.wandb")  # protobuf records; the logged keys and JSON values are plain bytes in it
    data = log.read_bytes()
    assert b"val/return" in data and b"7.5" in data and b"0.25" in data  # loss 1/4 at step 4
    assert b"horizon_marker" in data and b"1234567" in data  # the run's config


def test_a_time_budget_measures_the_rate_after_the_warm_up_and_refits():
    """Slow first steps (allocations, first calls) must not shrink the run: the rate is measured after the
    warm-up, and later fits raise the total again when the steps got faster (never above the planned total)."""
    n, totals = [0], []

    def step():
        n[0] += 1
        time.sleep(0.15 if n[0] <= 3 else 0.01)  # 3 slow warm-up steps, then 10 ms
        return {"loss": 1.0}

    t0 = time.monotonic()
    budget = TimeBudget(1.5, totals.append, fit_at=(0.1, 0.3, 0.6), warmup=0.25)
    result = Loop(step, lambda: n[0], 10_000, [budget]).run()
    took = time.monotonic() - t0
    assert not result.interrupted and took >= 1.2  # the budget was used, not cut short by an early fit
    assert n[0] >= 60  # ~100 fast steps fit after the warm-up; a fit on the first 0.15 s would allow ~10
    assert totals and all(t <= 10_000 for t in totals) and budget.fitted == totals[-1]
    capped = TimeBudget(5.0, fit_at=(0.01,), warmup=0.0)
    n[0] = 0
    Loop(step, lambda: n[0], 8, [capped]).run()
    assert n[0] == 8  # the planned total is a ceiling


def test_a_time_budget_is_used_to_the_end_after_a_slow_stretch_made_a_fit_too_low():
    """Steps slow for the first third (a compile, another job), then fast: the fits inside the slow stretch
    set a low total; reaching it with most of the budget left fits again on the recent rate instead of
    ending the run (a P2 pre-training once ended at 58% of its budget this way)."""
    n, totals = [0], []
    t0 = time.monotonic()

    def step():
        n[0] += 1
        time.sleep(0.04 if time.monotonic() - t0 < 0.5 else 0.005)
        return {}

    budget = TimeBudget(1.5, totals.append, fit_at=(0.1, 0.3, 0.6), warmup=0.03)
    Loop(step, lambda: n[0], 100_000, [budget]).run()
    took = time.monotonic() - t0
    assert took >= 1.4 and n[0] >= 60, (took, n[0], totals)  # ~12 slow steps, then ~200 fast ones fit
    assert len(totals) >= 2 and totals[-1] > totals[0]  # the fits after the slow stretch raised the total
    assert budget.fitted == totals[-1] and totals[-1] <= 100_000


def test_run_callbacks_refuse_an_unknown_logger_before_anything_runs(tmp_path):
    from pwm_core.train.loop import LoggerUnavailable

    with pytest.raises(LoggerUnavailable, match="unknown logger"):
        run_callbacks(tmp_path, "pretrain", loggers=["jsonl", "mlflow"])
    assert list(tmp_path.iterdir()) == []
    names = [type(cb).__name__ for cb in run_callbacks(tmp_path, "extract", lambda: None, checkpoint_every=5)]
    assert names == ["JsonlMetrics", "RunStatus", "Checkpoint"]


def test_a_time_budget_fits_the_total_to_the_budget_and_ends_like_a_finished_run():
    c, totals, saved = Counter(sleep=0.02), [], []
    final = Every(0, lambda: {"eval": float(c.n)})  # only at the end
    result = Loop(
        c.step,
        lambda: c.n,
        10_000,
        [TimeBudget(0.6, totals.append, fit_at=(0.1,)), final, Checkpoint(lambda: saved.append(c.n), every_s=0)],
    ).run()
    assert not result.interrupted and 10 <= c.n <= 40  # ~30 steps of 20 ms
    assert 1 <= len(totals) <= 2 and 15 <= totals[0] <= 40  # the fitted total, told to the trainer (once more
    # if the steps reached it before the end of the budget)
    assert final.last == {"eval": float(c.n)} and saved == [c.n]  # final evaluation and checkpoint ran


def test_keep_best_saves_the_best_scoring_state_and_survives_a_resume(tmp_path):
    import torch

    scores = iter([1.0, 3.0, 2.0, float("nan"), 2.5])
    c = Counter()
    keep = KeepBest("score", lambda: {"w": torch.tensor([float(c.n)])}, tmp_path / "best.safetensors")
    Loop(c.step, lambda: c.n, 5, [Every(1, lambda: {"score": next(scores)}), keep]).run()
    assert (keep.best, keep.best_step) == (3.0, 2) and read_best(tmp_path / "best.safetensors") == (2, 3.0)
    assert load_best(tmp_path / "best.safetensors")["w"].item() == 2.0
    resumed = KeepBest("score", lambda: {"w": torch.tensor([0.0])}, tmp_path / "best.safetensors")
    c.n = 1  # resumed from a checkpoint older than the best: that best is not this run's
    Loop(c.step, lambda: c.n, 2, [Every(1, lambda: {"score": 0.5}), resumed]).run()
    assert resumed.best == 0.5 and read_best(tmp_path / "best.safetensors") == (2, 0.5)
    c.n = 1
    stale = KeepBest("score", lambda: {"w": torch.tensor([0.0])}, tmp_path / "best.safetensors")
    Loop(c.step, lambda: c.n, 1, [stale]).run()  # nothing left to run: the later best must not survive
    assert stale.best is None and not (tmp_path / "best.safetensors").exists()
