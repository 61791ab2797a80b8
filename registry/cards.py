"""README.md cards for artifact versions pushed to the Hugging Face Hub.

A card is YAML front matter (built with huggingface_hub's `ModelCardData` / `DatasetCardData`, so
`model-index` has the shape Hub widgets read; a license; for a dataset, `configs` for the dataset
viewer) followed by markdown: what the artifact is, the exact commands and Python lines to pull and use
it, a replay video, evaluation results, dataset facts, lineage with Hub ids, a config summary and the
citation. The video and the Parquet previews are files committed beside the payload for the Hub page
only (`Extra`). Rendering is pure: the caller gathers the lineage, the evaluation and those files.

What a policy's card says about its evaluation is read here from its eval reports (pwmctl's
results.json: `summaries` and `videos`, by `policy_evaluation`), so registry/hub.py, which moves
versions to and from the Hub, knows nothing of the report format.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.index import Artifact
from registry.lineage import LineageNode, Remote, content_sha256

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_LICENSE = "mit"  # pwmctl's own; `pwmctl push --license` or config hub.license for another
MAX_CONFIG_ROWS = 30  # the full config is in manifest.json
# Files a push commits beside the payload, for the Hub page only (never part of the artifact; pull skips them).
PREVIEW_DIR = "preview"
REPLAY_VIDEO = f"{PREVIEW_DIR}/replay.mp4"  # a policy's replay, from its newest eval report with videos
PREVIEW_EPISODES = f"{PREVIEW_DIR}/episodes.parquet"  # a dataset's first episodes, one row per step
PREVIEW_TASKS = f"{PREVIEW_DIR}/tasks.parquet"  # a dataset's per-task summary
METAWORLD_PREFIX = "mw-"  # Meta-World task names; their score is success, not return

CITATION = """@inproceedings{georgiev2025pwm,
  title         = {{PWM}: Policy Learning with Multi-Task World Models},
  author        = {Georgiev, Ignat and Giridhar, Varun and Hansen, Nicklas and Garg, Animesh},
  booktitle     = {International Conference on Learning Representations (ICLR)},
  year          = {2025},
  eprint        = {2407.02466},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2407.02466}
}

@inproceedings{hansen2024tdmpc2,
  title         = {{TD-MPC2}: Scalable, Robust World Models for Continuous Control},
  author        = {Hansen, Nicklas and Su, Hao and Wang, Xiaolong},
  booktitle     = {International Conference on Learning Representations (ICLR)},
  year          = {2024},
  eprint        = {2310.16828},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2310.16828}
}"""

_ABOUT = {
    "dataset": "An offline RL dataset in the pwm-episodes Zarr v3 format (TD-MPC2 row alignment)",
    "worldmodel": "A multi-task world model (TD-MPC2 architecture) for PWM policy learning",
    "policy": "A PWM policy (encoder + task embedding + actor) extracted from a world model",
    "report": "An evaluation report: real-environment returns with IQM and bootstrap CIs",
}
_TAGS = {
    "dataset": ["offline-rl", "episodes"],
    "worldmodel": ["world-model", "model-based-rl"],
    "policy": ["policy", "model-based-rl"],
    "report": ["evaluation"],
}


@dataclass(frozen=True)
class Extra:
    """A file a push commits beside the payload for the Hub page only (a replay video, a Parquet
    preview): under preview/, described on the card, not part of the artifact (pull skips it)."""

    path: str
    description: str
    content: bytes | None = None
    source: Path | None = None


def policy_evaluation(artifact: Artifact, children: Iterable[Artifact]) -> dict[str, Any] | None:
    """For a policy's card: the summary of its newest eval report here, and the video of the newest
    report that recorded one of it (its own actions: not a baseline's, not MPPI's).

    Args:
        artifact: the version being pushed; other kinds than a policy get None.
        children: the artifacts that name it as a parent (`Registry.children`); its eval reports
            are the ones of kind report, read from their results.json.

    Returns:
        {"report": ref, "summary": `summaries[artifact.ref]` of that report, "video": its `videos`
        entry with "report" and "source" (the file) added}, the keys found; None when none is.
    """
    if artifact.kind != "policy":
        return None
    reports = sorted((a for a in children if a.kind == "report"), key=lambda a: a.registered, reverse=True)
    found: dict[str, Any] = {}
    for report in reports:
        try:
            results = json.loads((report.path / "results.json").read_text())
        except (OSError, ValueError):
            continue
        summary = (results.get("summaries") or {}).get(artifact.ref)
        if summary and "summary" not in found:
            found.update(report=report.ref, summary=summary)
        video = next(
            (
                v
                for v in results.get("videos") or []
                if isinstance(v, dict)
                and v.get("actor") == "policy"
                and v.get("policy") == artifact.ref
                and v.get("file") in report.manifest["files"]
            ),
            None,
        )
        if video and "video" not in found:
            found["video"] = {**video, "report": report.ref, "source": report.path / video["file"]}
    return found or None


def replay_extras(evaluation: Mapping[str, Any] | None) -> list[Extra]:
    """The replay video `policy_evaluation` found, as the REPLAY_VIDEO file of a push ([] without one)."""
    video = (evaluation or {}).get("video")
    if not video:
        return []
    caption = (
        f"{video.get('task')}, env seed {video.get('seed')}, return {video.get('return', float('nan')):.1f} "
        f"with deterministic actions (from `{video['report']}`)"
    )
    return [Extra(REPLAY_VIDEO, caption, source=Path(video["source"]))]


def render_card(
    artifact: Artifact,
    *,
    repo: str,
    repo_type: str,
    tag: str,
    endpoint: str,
    lineage: LineageNode,
    evaluation: Mapping[str, Any] | None = None,
    license: str = DEFAULT_LICENSE,
    extras: Mapping[str, str] | None = None,
) -> str:
    """The README.md of the commit that pushes `artifact` to `repo` as `tag`.

    Args:
        artifact: the version being pushed.
        repo, repo_type, tag, endpoint: where it goes.
        lineage: `Registry.lineage(artifact)`, its ancestors with their Hub copies.
        evaluation: for a policy, {"report": ref, "summary": the report's summary of this policy
            (`summaries[label]` of results.json)}; adds `model-index` results. Without a summary, a
            policy's own evaluation metrics (from extraction) are used.
        license: a Hub license id (mit, apache-2.0, cc-by-4.0, other, ...).
        extras: {path in the repo: one-line description} of the files committed beside the payload
            for the Hub page (REPLAY_VIDEO, PREVIEW_EPISODES, PREVIEW_TASKS).
    """
    extras = extras or {}
    hub_ids = _hub_ids(lineage, endpoint)
    results = _results(artifact, evaluation)
    front = _front_matter(artifact, hub_ids, results, license, extras)
    sections = [
        f"# {artifact.name} (pwmctl {artifact.kind}, {tag})",
        f"{_ABOUT[artifact.kind]}, shared with pwmctl, a toolkit for PWM (Policy learning with "
        f"multi-task World Models, [arXiv 2407.02466](https://arxiv.org/abs/2407.02466)).",
        _facts_table(artifact),
        _usage_section(artifact, repo, repo_type, tag, endpoint),
    ]
    if REPLAY_VIDEO in extras:
        sections.append(_video_section(REPLAY_VIDEO, extras[REPLAY_VIDEO], repo, repo_type, tag, endpoint))
    sections.append(_evaluation_section(artifact, evaluation, results))
    if artifact.kind == "dataset":
        sections.append(_dataset_section(artifact, extras))
    if artifact.kind == "report":
        sections.append(_report_videos_section(artifact))
    sections.append("## Lineage\n\n" + "\n".join(_lineage_lines(lineage, hub_ids, f"{repo}@{tag}", set())))
    sections.append(_config_section(artifact))
    sections.append(
        f"## Citation\n\nIf you use this {artifact.kind}, please cite PWM and TD-MPC2, whose "
        f"world model and data conventions it follows:\n\n```bibtex\n{CITATION}\n```"
    )
    return f"---\n{front.to_yaml()}\n---\n\n" + "\n\n".join(s.strip() for s in sections if s) + "\n"


def usage_commands(artifact: Artifact, repo: str, repo_type: str, tag: str, endpoint: str) -> list[str]:
    """The shell commands a card shows: pull this version, then use it."""
    flags = f" --repo-type {repo_type}"  # a dataset and a policy repo may share a name
    if endpoint.rstrip("/") != DEFAULT_ENDPOINT:
        flags += f" --hub-endpoint {endpoint}"
    tasks = ",".join(artifact.tasks) or "TASK"
    use = {
        "dataset": [
            f"pwmctl data info dataset/{artifact.name}",
            f"pwmctl data export dataset/{artifact.name} --format parquet",
            f"pwmctl pretrain --tasks {tasks} --data dataset/{artifact.name}",
        ],
        "worldmodel": [f"pwmctl extract {artifact.tasks[0] if artifact.tasks else 'TASK'} --wm {artifact.name}"],
        "policy": [f"pwmctl eval policy/{artifact.name} --seeds 10"],
        "report": [f"pwmctl show report/{artifact.name}"],
    }[artifact.kind]
    return [f"pwmctl pull {repo}@{tag}{flags}", *use]


def usage_python(artifact: Artifact, repo: str, repo_type: str, tag: str, endpoint: str) -> list[str]:
    """The Python lines a card shows (pwmctl.api): load this version by its Hub id, then use it."""
    hub_id = f"{'datasets/' if repo_type == 'dataset' else ''}{repo}@{tag}"
    lines = ["from pwmctl import api", ""]
    if endpoint.rstrip("/") != DEFAULT_ENDPOINT:
        lines = [
            "import os",
            "",
            "from pwmctl import api",
            "",
            f'os.environ["PWMCTL_HUB_ENDPOINT"] = "{endpoint}"  # this Hub, not huggingface.co',
            "",
        ]
    task = artifact.tasks[0] if artifact.tasks else "TASK"
    lines += {
        "dataset": [
            f'ds = api.open_dataset("{hub_id}")  # pulled into $PWM_HOME (~/.pwm), every file checked',
            "data = ds.load()  # obs (N, O), action (N, A), reward (N,), task (N,), episode_ends (E,)",
        ],
        "worldmodel": [
            f'wm = api.load_world_model("{hub_id}")  # pulled into $PWM_HOME (~/.pwm), every file checked',
            "print(wm.cfg.task_names)  # encode / next / reward / pi / Q",
        ],
        "policy": [
            f'policy = api.load_policy("{hub_id}")  # pulled into $PWM_HOME (~/.pwm), every file checked',
            f'returns = api.rollout(policy, "{task}", seed=0, episodes=2)',
        ],
        "report": [
            "import json",
            "",
            f'report = api.resolve("{hub_id}", "report")',
            'results = json.loads((report.path / "results.json").read_text())',
        ],
    }[artifact.kind]
    return lines


def dataset_facts(artifact: Artifact) -> dict[str, Any]:
    """Format, version, tasks and dims of a dataset, read from its Zarr root attributes
    (`*/zarr.json`: plain JSON, so the registry needs no Zarr), plus episode counts."""
    facts: dict[str, Any] = {
        "episodes": artifact.metrics.get("episodes"),
        "transitions": artifact.metrics.get("transitions"),
    }
    for rel in artifact.manifest["files"]:
        parts = rel.split("/")
        if len(parts) == 2 and parts[1] == "zarr.json":
            try:
                attrs = json.loads((Path(artifact.path) / rel).read_text()).get("attributes", {})
            except (OSError, ValueError):
                continue
            task_set = attrs.get("task_set") or {}
            facts.update(
                store=parts[0],
                format=attrs.get("format"),
                format_version=attrs.get("format_version"),
                obs_dim=task_set.get("obs_dim"),
                act_dim=task_set.get("act_dim"),
                task_ids={t["name"]: t.get("id") for t in task_set.get("tasks", []) if "name" in t},
            )
            break
    return facts


def _front_matter(
    artifact: Artifact,
    hub_ids: dict[str, Remote],
    results: list[dict[str, Any]],
    license: str,
    extras: Mapping[str, str],
):
    from huggingface_hub import DatasetCardData, EvalResult, ModelCardData

    ancestors = [remote for ref, remote in hub_ids.items() if ref != artifact.ref]
    datasets = sorted({r.repo for r in ancestors if r.repo_type == "dataset"})
    pwm = {
        "kind": artifact.kind,
        "name": artifact.name,
        "version": artifact.version,
        "tasks": artifact.tasks,
        "content_sha256": content_sha256(artifact.manifest),
    }
    tags = ["pwmctl", "pwm", "reinforcement-learning", *_TAGS[artifact.kind], *artifact.tasks]
    if artifact.kind == "dataset":
        facts = dataset_facts(artifact)
        pwm["format"], pwm["format_version"] = facts.get("format"), facts.get("format_version")
        configs = (
            [
                {
                    "config_name": "episodes",
                    "data_files": [{"split": "preview", "path": PREVIEW_EPISODES}],
                    "default": True,
                }
            ]
            if PREVIEW_EPISODES in extras
            else []
        )
        if PREVIEW_TASKS in extras:
            configs.append({"config_name": "tasks", "data_files": [{"split": "summary", "path": PREVIEW_TASKS}]})
        return DatasetCardData(
            pretty_name=f"{artifact.name} (pwmctl dataset)",
            license=license,
            task_categories=["reinforcement-learning"],
            size_categories=_size_category(facts.get("transitions")),
            tags=tags,
            library_name="pwmctl",
            configs=configs or None,
            pwm=pwm,
        )
    eval_results = [
        EvalResult(
            task_type="reinforcement-learning",
            task_name="reinforcement-learning",
            dataset_type=r["task"],
            dataset_name=r["task"],
            metric_type=r["metric"],
            metric_name=r["metric"],
            metric_value=r["value"],
        )
        for r in results
    ]
    base = [r.repo for r in ancestors if r.repo_type == "model"][:1] if artifact.kind == "policy" else []
    return ModelCardData(
        library_name="pwmctl",
        license=license,
        tags=tags,
        datasets=datasets or None,
        base_model=base or None,
        model_name=artifact.name,
        eval_results=eval_results or None,
        pipeline_tag="reinforcement-learning",
        pwm=pwm,
    )


def _is_metaworld(task: str) -> bool:
    return task.startswith(METAWORLD_PREFIX)


def _results(artifact: Artifact, evaluation: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The `model-index` results: per task, the mean return (DMC and custom tasks) or the success rate
    (Meta-World), from the eval report if there is one, else from the policy's own evaluation."""
    rows = []
    if evaluation and evaluation.get("summary"):
        for task, row in evaluation["summary"].get("tasks", {}).items():
            if row.get("success_rate") is not None or _is_metaworld(task):
                rows.append({"task": task, "metric": "success_rate", "value": round(row["success_rate"], 4)})
            else:
                rows.append(
                    {
                        "task": task,
                        "metric": "mean_reward",
                        "value": f"{row['return_mean']:.2f} +/- {row['return_std']:.2f}",
                    }
                )
    elif artifact.kind == "policy" and len(artifact.tasks) == 1:
        task, metrics = artifact.tasks[0], artifact.metrics
        if _is_metaworld(task) and isinstance(metrics.get("eval_success"), (int, float)):
            rows.append({"task": task, "metric": "success_rate", "value": round(metrics["eval_success"], 4)})
        elif not _is_metaworld(task) and isinstance(metrics.get("eval_return"), (int, float)):
            rows.append({"task": task, "metric": "mean_reward", "value": f"{metrics['eval_return']:.2f}"})
    return rows


def _facts_table(artifact: Artifact) -> str:
    code = artifact.manifest.get("code_version") or {}
    code_text = " ".join(str(v) for v in (code.get("pwmctl"), (code.get("git_sha") or "")[:12]) if v) or "unknown"
    size = sum(f["size"] for f in artifact.manifest["files"].values())
    rows = [
        ("artifact", f"`{artifact.ref}`"),
        ("tasks", ", ".join(artifact.tasks) or "-"),
        ("created", artifact.created),
        ("made by", f"pwmctl {code_text}"),
        ("files", f"{len(artifact.manifest['files'])} ({size:,} bytes); sha256 of each in `manifest.json`"),
    ]
    success_applies = any(_is_metaworld(t) for t in artifact.tasks)  # DMC has no success signal
    rows += [
        (k, _fmt(v))
        for k, v in artifact.metrics.items()
        if isinstance(v, (int, float, str)) and (success_applies or "success" not in k)
    ][:8]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _usage_section(artifact: Artifact, repo: str, repo_type: str, tag: str, endpoint: str) -> str:
    shell = "\n".join(usage_commands(artifact, repo, repo_type, tag, endpoint))
    python = "\n".join(usage_python(artifact, repo, repo_type, tag, endpoint))
    return (
        f"## Use it\n\nFrom the command line, with pwmctl installed:\n\n```bash\n{shell}\n```\n\n"
        f"From Python:\n\n```python\n{python}\n```\n\n"
        "Both download the files pinned to the commit of this tag, check each against the sha256 in "
        "`manifest.json`, and register the artifact with its lineage."
    )


def _video_section(path: str, caption: str, repo: str, repo_type: str, tag: str, endpoint: str) -> str:
    url = f"{endpoint.rstrip('/')}/{'datasets/' if repo_type == 'dataset' else ''}{repo}/resolve/{tag}/{path}"
    return (
        f'## Replay\n\n<video controls autoplay loop muted width="384" src="{url}"></video>\n\n'
        f"[`{path}`]({path}): {caption}"
    )


def _evaluation_section(artifact: Artifact, evaluation: Mapping[str, Any] | None, results: list[dict[str, Any]]) -> str:
    if not (evaluation and evaluation.get("summary")):
        if not results:
            return ""
        r = results[0]
        what = "success rate" if r["metric"] == "success_rate" else "mean return"
        return (
            f"## Evaluation\n\n{r['task']}: {what} {r['value']} in the evaluation episodes run while "
            f"extracting (update {artifact.metrics.get('selected_update', '?')}). For returns with "
            f"confidence intervals: `pwmctl eval policy/{artifact.name} --seeds 10`, then push again."
        )
    summary = evaluation["summary"]
    lines = [
        f"## Evaluation\n\nFrom `{evaluation['report']}` ({summary.get('runs_per_task', '?')} runs per task; "
        f"score: {summary.get('score', 'normalised return')}).\n",
        "| task | return (mean ± std) | success | runs |",
        "|---|---|---|---|",
    ]
    for task, row in summary.get("tasks", {}).items():
        success = "-" if row.get("success_rate") is None else f"{row['success_rate']:.2f}"
        returns = f"{row['return_mean']:.1f} ± {row['return_std']:.1f}"
        lines.append(f"| {task} | {returns} | {success} | {row.get('n', '')} |")
    iqm = summary.get("aggregate", {}).get("iqm")
    if iqm:
        level = summary.get("ci", {}).get("level", 0.95)
        lines.append(f"\nIQM score {iqm['value']:.3f} ({level:.0%} CI {iqm['lo']:.3f} to {iqm['hi']:.3f}).")
    return "\n".join(lines)


def _report_videos_section(artifact: Artifact) -> str:
    """A pushed report's own videos (`pwmctl eval --video`), linked."""
    videos = sorted(p for p in artifact.manifest["files"] if p.startswith("videos/") and p.endswith(".mp4"))
    if not videos:
        return ""
    return "## Videos\n\n" + "\n".join(f"- [`{p}`]({p})" for p in videos)


def _dataset_section(artifact: Artifact, extras: Mapping[str, str]) -> str:
    facts = dataset_facts(artifact)
    ids = facts.get("task_ids") or {}
    tasks = ", ".join(f"{t} (id {ids[t]})" if ids.get(t) is not None else t for t in artifact.tasks) or "-"
    return "\n".join(
        [
            "## Dataset",
            "",
            f"- format: {facts.get('format') or 'unknown'} version {facts.get('format_version', '?')} "
            f"(`{facts.get('store', 'data.zarr')}`, Zarr v3)",
            f"- tasks: {tasks}",
            f"- episodes: {facts.get('episodes')}",
            f"- transitions: {facts.get('transitions')}",
            f"- obs dim {facts.get('obs_dim')}, action dim {facts.get('act_dim')} (zero-padded across tasks)",
        ]
    ) + _preview_text(extras)


def _preview_text(extras: Mapping[str, str]) -> str:
    previews = [(path, text) for path, text in extras.items() if path in (PREVIEW_EPISODES, PREVIEW_TASKS)]
    if not previews:
        return ""
    return (
        "\n\n### Preview\n\nThe dataset viewer shows Parquet previews, made at push time (not part of the "
        "artifact; `pull` skips them):\n\n"
        + "\n".join(f"- `{path}`: {text}" for path, text in previews)
        + "\n\nThe whole dataset as Parquet: `pwmctl data export` (see above)."
    )


def _config_section(artifact: Artifact) -> str:
    rows = _flatten(artifact.config)
    if not rows:
        return ""
    shown = rows[:MAX_CONFIG_ROWS]
    more = f"\n\n{len(rows) - len(shown)} more keys in `manifest.json`." if len(rows) > len(shown) else ""
    return "## Config\n\n| key | value |\n|---|---|\n" + "\n".join(f"| {k} | {_fmt(v)} |" for k, v in shown) + more


def _hub_ids(node: LineageNode, endpoint: str) -> dict[str, Remote]:
    """{ref: its Hub copy on `endpoint`} over the lineage tree."""
    found = {}
    same = [r for r in node.remotes if r.endpoint.rstrip("/") == endpoint.rstrip("/")]
    if same:
        found[node.ref] = same[0]
    for parent in node.parents:
        found.update(_hub_ids(parent, endpoint))
    return found


def _lineage_lines(
    node: LineageNode, hub_ids: dict[str, Remote], this: str, seen: set[str], depth: int = 0
) -> list[str]:
    """The lineage tree, depth first; an ancestor reached again (a dataset both the policy and its
    world model name) is not repeated."""
    if node.ref in seen:
        return []
    seen.add(node.ref)
    if depth == 0:
        where = f"this repo, {this}"
    elif node.ref in hub_ids:
        where = f"[{hub_ids[node.ref].hub_id}]({hub_ids[node.ref].url})"
    else:
        where = "not on the Hub"
    lines = [f"{'  ' * depth}- `{node.ref}`: {where}"]
    for parent in node.parents:
        lines += _lineage_lines(parent, hub_ids, this, seen, depth + 1)
    return lines


def _flatten(table: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("|", "\\|")


def _size_category(transitions: Any) -> list[str] | None:
    if not isinstance(transitions, int):
        return None
    for bound, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
        (100_000_000, "10M<n<100M"),
    ):
        if transitions < bound:
            return [label]
    return ["n>100M"]
