"""Headless matplotlib figures of artifacts: world-model losses, policy learning curves, evaluation
reports (IQM with 95% CIs and per-task returns). Each function takes plain data and writes one PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

MODEL_TERMS = ("consistency", "reward_ce", "value_ce")
HELD_OUT = ("val/consistency", "val/reward_ce")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt


def read_jsonl(path: Path) -> list[dict]:
    """A metrics log's rows ([] when there is none yet)."""
    from pwm_core.train.loop import read_jsonl as read

    return read(path) if path.exists() else []


def _series(rows: Sequence[dict], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    pts = [(r[x], r[key]) for r in rows if key in r and x in r and r[key] is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_world_model(rows: Sequence[dict], title: str, out: Path) -> Path:
    """Training loss terms and held-out errors against the update, log scale."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in MODEL_TERMS:
        xs, ys = _series(rows, key)
        if xs:
            axes[0].plot(xs, ys, label=key)
    for key in HELD_OUT:
        xs, ys = _series(rows, key)
        if xs:
            axes[1].plot(xs, ys, marker="o", ms=3, label=key.removeprefix("val/"))
    for ax, name in zip(axes, ("training loss terms", "held-out episodes")):
        ax.set(xlabel="update", title=name, yscale="log")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, out)


def plot_policy(rows: Sequence[dict], curve: Sequence[Sequence[float]], title: str, out: Path) -> Path:
    """Real-env evaluation return (the learning curve) and the model-predicted return per update."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if curve:
        axes[0].plot([c[0] for c in curve], [c[1] for c in curve], marker="o", color="C0")
    axes[0].set(xlabel="update", ylabel="return", title="evaluation return (real env)")
    xs, ys = _series(rows, "model_return")
    if xs:
        axes[1].plot(xs, ys, color="C1", lw=0.8)
    axes[1].set(xlabel="update", ylabel="symlog return", title="model-predicted return")
    fig.suptitle(title)
    return _save(fig, out)


def plot_report(results: dict, title: str, out: Path) -> Path:
    """IQM of the normalised score with its 95% CI per policy, and per-task mean return +- std."""
    plt = _pyplot()
    summaries = results["summaries"]
    labels = list(summaries)
    fig, axes = plt.subplots(1, 2, figsize=(10, max(2.4, 0.55 * len(labels) + 1.4)))
    iqm = [summaries[k]["aggregate"]["iqm"] for k in labels]
    ys = range(len(labels))
    axes[0].barh(
        ys,
        [a["value"] for a in iqm],
        color=[f"C{i}" for i in ys],
        xerr=[[a["value"] - a["lo"] for a in iqm], [a["hi"] - a["value"] for a in iqm]],
        capsize=4,
    )
    axes[0].set_yticks(list(ys), labels, fontsize=8)
    axes[0].set(xlabel="IQM normalised score (95% CI)", title="aggregate")
    axes[0].invert_yaxis()
    tasks = sorted({t for k in labels for t in summaries[k]["tasks"]})
    width = 0.8 / len(labels)
    for i, k in enumerate(labels):
        stats = [summaries[k]["tasks"].get(t) for t in tasks]
        axes[1].bar(
            [j + i * width for j in range(len(tasks))],
            [s["return_mean"] if s else 0 for s in stats],
            width,
            yerr=[s["return_std"] if s else 0 for s in stats],
            capsize=3,
            label=k,
            color=f"C{i}",
        )
    axes[1].set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(tasks))], tasks, fontsize=8)
    axes[1].set(ylabel="return (mean +- std)", title="per task")
    axes[1].legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, out)


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out
