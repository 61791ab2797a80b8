"""README.md cards for artifact versions pushed to the Hugging Face Hub.

A card is YAML front matter (built with huggingface_hub's `ModelCardData` / `DatasetCardData`, so
`model-index` has the shape Hub widgets read) followed by markdown: what the artifact is, the exact
commands to pull and use it, evaluation results, dataset facts, lineage with Hub ids, and a config
summary. Rendering is pure: the caller gathers the lineage and the evaluation summary.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from registry.store import Artifact, LineageNode, Remote, content_sha256

DEFAULT_ENDPOINT = "https://huggingface.co"
MAX_CONFIG_ROWS = 30  # the full config is in manifest.json

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


def render_card(
    artifact: Artifact,
    *,
    repo: str,
    repo_type: str,
    tag: str,
    endpoint: str,
    lineage: LineageNode,
    evaluation: Mapping[str, Any] | None = None,
) -> str:
    """The README.md of the commit that pushes `artifact` to `repo` as `tag`.

    Args:
        artifact: the version being pushed.
        repo, repo_type, tag, endpoint: where it goes.
        lineage: `Registry.lineage(artifact)`, its ancestors with their Hub copies.
        evaluation: for a policy, {"report": ref, "summary": the report's summary of this policy}
            (`summaries[label]` of results.json); adds `model-index` results.
    """
    hub_ids = _hub_ids(lineage, endpoint)
    front = _front_matter(artifact, hub_ids, evaluation)
    sections = [
        f"# {artifact.name} (pwmctl {artifact.kind}, {tag})",
        f"{_ABOUT[artifact.kind]}, shared with pwmctl, a toolkit for PWM (Policy learning with "
        f"multi-task World Models, [arXiv 2407.02466](https://arxiv.org/abs/2407.02466)).",
        _facts_table(artifact),
        "## Use it\n\n```bash\n" + "\n".join(usage_commands(artifact, repo, repo_type, tag, endpoint)) + "\n```\n\n"
        "`pull` downloads the files pinned to the commit of this tag, checks each against the sha256 in "
        "`manifest.json`, and registers the artifact with its lineage.",
    ]
    if evaluation:
        sections.append(_evaluation_section(evaluation))
    if artifact.kind == "dataset":
        sections.append(_dataset_section(artifact))
    sections.append("## Lineage\n\n" + "\n".join(_lineage_lines(lineage, hub_ids, f"{repo}@{tag}")))
    sections.append(_config_section(artifact))
    return f"---\n{front.to_yaml()}\n---\n\n" + "\n\n".join(s.strip() for s in sections if s) + "\n"


def usage_commands(artifact: Artifact, repo: str, repo_type: str, tag: str, endpoint: str) -> list[str]:
    """The shell commands a card shows: pull this version, then use it."""
    flags = f" --repo-type {repo_type}"  # a dataset and a policy repo may share a name
    if endpoint.rstrip("/") != DEFAULT_ENDPOINT:
        flags += f" --hub-endpoint {endpoint}"
    tasks = ",".join(artifact.tasks) or "TASK"
    use = {
        "dataset": [f"pwmctl data info dataset/{artifact.name}",
                    f"pwmctl pretrain --tasks {tasks} --data dataset/{artifact.name}"],
        "worldmodel": [f"pwmctl extract {artifact.tasks[0] if artifact.tasks else 'TASK'} --wm {artifact.name}"],
        "policy": [f"pwmctl eval policy/{artifact.name} --seeds 10"],
        "report": [f"pwmctl show report/{artifact.name}"],
    }[artifact.kind]
    return [f"pwmctl pull {repo}@{tag}{flags}", *use]


def dataset_facts(artifact: Artifact) -> dict[str, Any]:
    """Format, version, tasks and dims of a dataset, read from its Zarr root attributes
    (`*/zarr.json`: plain JSON, so the registry needs no Zarr), plus episode counts."""
    facts: dict[str, Any] = {"episodes": artifact.metrics.get("episodes"),
                             "transitions": artifact.metrics.get("transitions")}
    for rel in artifact.manifest["files"]:
        parts = rel.split("/")
        if len(parts) == 2 and parts[1] == "zarr.json":
            try:
                attrs = json.loads((Path(artifact.path) / rel).read_text()).get("attributes", {})
            except (OSError, ValueError):
                continue
            task_set = attrs.get("task_set") or {}
            facts.update(store=parts[0], format=attrs.get("format"), format_version=attrs.get("format_version"),
                         obs_dim=task_set.get("obs_dim"), act_dim=task_set.get("act_dim"),
                         task_ids={t["name"]: t.get("id") for t in task_set.get("tasks", []) if "name" in t})
            break
    return facts


def _front_matter(artifact: Artifact, hub_ids: dict[str, Remote], evaluation: Mapping[str, Any] | None):
    from huggingface_hub import DatasetCardData, EvalResult, ModelCardData

    ancestors = [remote for ref, remote in hub_ids.items() if ref != artifact.ref]
    datasets = sorted({r.repo for r in ancestors if r.repo_type == "dataset"})
    pwm = {"kind": artifact.kind, "name": artifact.name, "version": artifact.version, "tasks": artifact.tasks,
           "content_sha256": content_sha256(artifact.manifest)}
    tags = ["pwmctl", "pwm", "reinforcement-learning", *_TAGS[artifact.kind], *artifact.tasks]
    if artifact.kind == "dataset":
        facts = dataset_facts(artifact)
        pwm["format"], pwm["format_version"] = facts.get("format"), facts.get("format_version")
        return DatasetCardData(pretty_name=f"{artifact.name} (pwmctl dataset)",
                               task_categories=["reinforcement-learning"],
                               size_categories=_size_category(facts.get("transitions")), tags=tags,
                               library_name="pwmctl", pwm=pwm)
    results = []
    for task, row in (evaluation or {}).get("summary", {}).get("tasks", {}).items():
        common = dict(task_type="reinforcement-learning", task_name="reinforcement-learning", dataset_type=task,
                      dataset_name=task)
        results.append(EvalResult(metric_type="mean_reward", metric_name="mean_reward",
                                  metric_value=f"{row['return_mean']:.2f} +/- {row['return_std']:.2f}", **common))
        if row.get("success_rate") is not None:
            results.append(EvalResult(metric_type="success_rate", metric_name="success_rate",
                                      metric_value=round(row["success_rate"], 4), **common))
    base = [r.repo for r in ancestors if r.repo_type == "model"][:1] if artifact.kind == "policy" else []
    return ModelCardData(library_name="pwmctl", tags=tags, datasets=datasets or None, base_model=base or None,
                         model_name=artifact.name, eval_results=results or None,
                         pipeline_tag="reinforcement-learning", pwm=pwm)


def _facts_table(artifact: Artifact) -> str:
    code = artifact.manifest.get("code_version") or {}
    code_text = " ".join(str(v) for v in (code.get("pwmctl"), (code.get("git_sha") or "")[:12]) if v) or "unknown"
    size = sum(f["size"] for f in artifact.manifest["files"].values())
    rows = [("artifact", f"`{artifact.ref}`"), ("tasks", ", ".join(artifact.tasks) or "-"),
            ("created", artifact.created), ("made by", f"pwmctl {code_text}"),
            ("files", f"{len(artifact.manifest['files'])} ({size:,} bytes); sha256 of each in `manifest.json`")]
    rows += [(k, _fmt(v)) for k, v in artifact.metrics.items() if isinstance(v, (int, float, str))][:8]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _evaluation_section(evaluation: Mapping[str, Any]) -> str:
    summary = evaluation["summary"]
    lines = [f"## Evaluation\n\nFrom `{evaluation['report']}` ({summary.get('runs_per_task', '?')} runs per task; "
             f"score: {summary.get('score', 'normalised return')}).\n",
             "| task | return (mean ± std) | success | runs |", "|---|---|---|---|"]
    for task, row in summary.get("tasks", {}).items():
        success = "-" if row.get("success_rate") is None else f"{row['success_rate']:.2f}"
        returns = f"{row['return_mean']:.1f} ± {row['return_std']:.1f}"
        lines.append(f"| {task} | {returns} | {success} | {row.get('n', '')} |")
    iqm = summary.get("aggregate", {}).get("iqm")
    if iqm:
        level = summary.get("ci", {}).get("level", 0.95)
        lines.append(f"\nIQM score {iqm['value']:.3f} ({level:.0%} CI {iqm['lo']:.3f} to {iqm['hi']:.3f}).")
    return "\n".join(lines)


def _dataset_section(artifact: Artifact) -> str:
    facts = dataset_facts(artifact)
    ids = facts.get("task_ids") or {}
    tasks = ", ".join(f"{t} (id {ids[t]})" if ids.get(t) is not None else t for t in artifact.tasks) or "-"
    return "\n".join([
        "## Dataset", "",
        f"- format: {facts.get('format') or 'unknown'} version {facts.get('format_version', '?')} "
        f"(`{facts.get('store', 'data.zarr')}`, Zarr v3)",
        f"- tasks: {tasks}",
        f"- episodes: {facts.get('episodes')}",
        f"- transitions: {facts.get('transitions')}",
        f"- obs dim {facts.get('obs_dim')}, action dim {facts.get('act_dim')} (zero-padded across tasks)",
    ])


def _config_section(artifact: Artifact) -> str:
    rows = _flatten(artifact.config)
    if not rows:
        return ""
    shown = rows[:MAX_CONFIG_ROWS]
    more = f"\n\n{len(rows) - len(shown)} more keys in `manifest.json`." if len(rows) > len(shown) else ""
    return ("## Config\n\n| key | value |\n|---|---|\n"
            + "\n".join(f"| {k} | {_fmt(v)} |" for k, v in shown) + more)


def _hub_ids(node: LineageNode, endpoint: str) -> dict[str, Remote]:
    """{ref: its Hub copy on `endpoint`} over the lineage tree."""
    found = {}
    same = [r for r in node.remotes if r.endpoint.rstrip("/") == endpoint.rstrip("/")]
    if same:
        found[node.ref] = same[0]
    for parent in node.parents:
        found.update(_hub_ids(parent, endpoint))
    return found


def _lineage_lines(node: LineageNode, hub_ids: dict[str, Remote], this: str, depth: int = 0) -> list[str]:
    if depth == 0:
        where = f"this repo, {this}"
    elif node.ref in hub_ids:
        where = f"[{hub_ids[node.ref].hub_id}]({hub_ids[node.ref].url})"
    else:
        where = "not on the Hub"
    lines = [f"{'  ' * depth}- `{node.ref}`: {where}"]
    for parent in node.parents:
        lines += _lineage_lines(parent, hub_ids, this, depth + 1)
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
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")):
        if transitions < bound:
            return [label]
    return ["n>100M"]
