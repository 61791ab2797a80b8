"""Hub cards: license, citation, CLI + Python usage, model-index results by task kind, lineage once, the
replay video of a policy, a dataset's Parquet previews for the dataset viewer, and quiet push logs."""

from __future__ import annotations

import ast
import io
import json
import os
import re

import pytest
import yaml
from helpers import run, run_json
from test_data_export import make_dataset
from test_hub import TASK, front_matter, publish, push_ref, summaries_for, zarr_files

from registry import Registry
from registry.cards import CITATION, PREVIEW_EPISODES, PREVIEW_TASKS, REPLAY_VIDEO
from registry.hub import HubError, plan_push, pull

pytest_plugins = ["fakehub"]  # the fake_hub fixture
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")  # inside huggingface_hub

VIDEO = b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000)  # stands for an mp4 (the card only links it)


def lineage_of(reg: Registry, kind: str, name: str, policy_metrics=None, task=TASK) -> tuple[str, str]:
    """dataset -> world model -> policy of `task` (which names both): refs of the dataset and the policy."""
    data = publish(reg, "dataset", "d", zarr_files(), metrics={"episodes": 2, "transitions": 1000})
    wm = publish(reg, "worldmodel", "wm", {"model.safetensors": os.urandom(2000)}, parents=[data.ref])
    with reg.stage(kind, name) as staging:
        (staging.path / "policy.safetensors").write_bytes(os.urandom(2000))
        policy = staging.publish(parents=[wm.ref, data.ref], tasks=[task], metrics=policy_metrics or {}, config={})
    return data.ref, policy.ref


def report_with_video(reg: Registry, policy_ref: str, entries: list[dict], summary=None):
    files = {"results.json": json.dumps({**(summary or summaries_for(policy_ref)), "videos": entries}).encode()}
    files.update({e["file"]: VIDEO for e in entries})
    return publish(reg, "report", "eval", files, parents=[policy_ref])


def card_of(plan) -> str:
    return next(f.content for f in plan.files if f.path == "README.md").decode()


def section(card: str, title: str) -> str:
    return card.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_policy_card_has_license_citation_usage_and_each_ancestor_once(tmp_path, fake_hub):
    reg = Registry(tmp_path / "home")
    data, policy = lineage_of(reg, "policy", "cartpole")
    push_ref(reg, data, "me/d", fake_hub)
    plan = plan_push(reg, policy, "me/cartpole", endpoint=fake_hub.url)
    card = card_of(plan)
    assert front_matter(card)["license"] == "mit"
    assert f"```bibtex\n{CITATION}\n```" in card and "2407.02466" in CITATION and "2310.16828" in CITATION
    assert CITATION.count("@inproceedings{") == 2 and CITATION.count("{") == CITATION.count("}")
    assert f"pwmctl pull me/cartpole@v1 --repo-type model --hub-endpoint {fake_hub.url}" in card
    python = section(card, "Use it").split("```python\n", 1)[1].split("```", 1)[0]
    ast.parse(python)  # the snippet is Python
    assert 'api.load_policy("me/cartpole@v1")' in python and f'"PWMCTL_HUB_ENDPOINT"] = "{fake_hub.url}"' in python
    lineage = section(card, "Lineage")
    assert lineage.count("`dataset/d:v1`") == 1 and lineage.count("`worldmodel/wm:v1`") == 1  # dataset: 2 paths
    assert "datasets/me/d@v1" in lineage

    other = card_of(plan_push(reg, policy, "me/cartpole", endpoint=fake_hub.url, license="apache-2.0"))
    assert front_matter(other)["license"] == "apache-2.0"
    with pytest.raises(HubError, match="bad license 'MIT License'"):
        plan_push(reg, policy, "me/cartpole", endpoint=fake_hub.url, license="MIT License")


def test_model_index_reports_returns_for_dmc_and_success_for_metaworld(tmp_path, fake_hub):
    # a DMC policy without a report: its extraction's return; no success row (DMC has none)
    reg = Registry(tmp_path / "dmc")
    _, policy = lineage_of(
        reg, "policy", "cartpole", {"eval_return": 301.25, "eval_success": 0.0, "selected_update": 40}
    )
    card = card_of(plan_push(reg, policy, "me/cartpole", endpoint=fake_hub.url))
    [result] = front_matter(card)["model-index"][0]["results"]
    assert result["metrics"] == [{"type": "mean_reward", "value": "301.25", "name": "mean_reward"}]
    assert "eval_success" not in card and "update 40" in section(card, "Evaluation")

    # with an eval report: its mean +/- std
    report_with_video(reg, policy, [])
    card = card_of(plan_push(reg, policy, "me/cartpole", endpoint=fake_hub.url))
    assert front_matter(card)["model-index"][0]["results"][0]["metrics"][0]["value"] == "812.50 +/- 12.25"

    # Meta-World: the success rate, from the report or from extraction
    reg = Registry(tmp_path / "mw")
    _, policy = lineage_of(reg, "policy", "reach", {"eval_return": 350.0, "eval_success": 0.75}, task="mw-reach")
    card = card_of(plan_push(reg, policy, "me/reach", endpoint=fake_hub.url))
    [result] = front_matter(card)["model-index"][0]["results"]
    assert result["dataset"]["name"] == "mw-reach"
    assert result["metrics"] == [{"type": "success_rate", "value": 0.75, "name": "success_rate"}]
    assert "eval_success | 0.75" in card
    summary = {
        "summaries": {
            policy: {
                "label": policy,
                "runs_per_task": 4,
                "tasks": {
                    "mw-reach": {
                        "n": 4,
                        "return_mean": 410.0,
                        "return_std": 20.0,
                        "success_rate": 0.5,
                        "score_mean": 0.5,
                    }
                },
            }
        }
    }
    report_with_video(reg, policy, [], summary=summary)
    card = card_of(plan_push(reg, policy, "me/reach", endpoint=fake_hub.url))
    metrics = front_matter(card)["model-index"][0]["results"][0]["metrics"]
    assert metrics == [{"type": "success_rate", "value": 0.5, "name": "success_rate"}]


def test_policy_push_carries_its_replay_video_and_pull_skips_it(tmp_path, fake_hub):
    reg = Registry(tmp_path / "home")
    _, policy = lineage_of(reg, "policy", "cartpole")
    video = {
        "label": policy,
        "actor": "policy",
        "policy": policy,
        "task": TASK,
        "seed": 0,
        "return": 812.5,
        "file": "videos/policy-cartpole.mp4",
        "written_to": "/elsewhere/x.mp4",
    }
    baselines = [
        {**video, "label": "random", "actor": "random", "policy": None, "file": "videos/random.mp4"},
        {**video, "label": policy + "+mppi", "actor": "mppi", "file": "videos/mppi.mp4"},
    ]
    report = report_with_video(reg, policy, [*baselines, video])

    result = push_ref(reg, policy, "me/cartpole", fake_hub)
    files = fake_hub.files("me/cartpole", "v1")
    assert files[REPLAY_VIDEO] == VIDEO
    card = files["README.md"].decode()
    url = f"{fake_hub.url}/me/cartpole/resolve/v1/{REPLAY_VIDEO}"
    assert f'src="{url}"' in section(card, "Replay") and f"[`{REPLAY_VIDEO}`]({REPLAY_VIDEO})" in card
    assert f"return 812.5 with deterministic actions (from `{report.ref}`)" in card

    fresh = Registry(tmp_path / "fresh")
    got = pull(fresh, "me/cartpole@v1", endpoint=fake_hub.url)
    assert got.artifact.manifest["files"] == reg.resolve(policy).manifest["files"]
    assert not (got.artifact.path / "preview").exists() and fresh.verify(got.artifact.ref) == []
    assert result.remote.commit_sha == got.remote.commit_sha

    # only baselines' videos: no replay
    reg2 = Registry(tmp_path / "baselines")
    _, policy2 = lineage_of(reg2, "policy", "cartpole")
    report_with_video(reg2, policy2, [{**b, "policy": None if b["actor"] == "random" else policy2} for b in baselines])
    plan = plan_push(reg2, policy2, "me/c2", endpoint=fake_hub.url)
    assert REPLAY_VIDEO not in {f.path for f in plan.files} and "## Replay" not in card_of(plan)


def test_pushed_report_links_its_videos(tmp_path, fake_hub):
    reg = Registry(tmp_path / "home")
    _, policy = lineage_of(reg, "policy", "cartpole")
    report = report_with_video(
        reg,
        policy,
        [
            {
                "label": "random",
                "actor": "random",
                "policy": None,
                "task": TASK,
                "seed": 0,
                "return": 1.0,
                "file": "videos/random-x.mp4",
            }
        ],
    )
    card = card_of(plan_push(reg, report.ref, "me/eval", endpoint=fake_hub.url))
    assert "- [`videos/random-x.mp4`](videos/random-x.mp4)" in section(card, "Videos")


def test_dataset_push_has_parquet_previews_the_viewer_reads(tmp_path, fake_hub):
    pa = pytest.importorskip("pyarrow.parquet")
    ref = make_dataset(tmp_path, episodes=6)
    run(tmp_path, "config", "set", "hub.license", "cc-by-4.0")
    pushed = run_json(tmp_path, "push", ref, "--repo", "me/mix", "--hub-endpoint", fake_hub.url)["pushed"]
    assert pushed[0]["repo_type"] == "dataset"
    files = fake_hub.files("me/mix", "v1", repo_type="dataset")
    card = files["README.md"].decode()
    meta = front_matter(card)
    assert meta["license"] == "cc-by-4.0"
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert configs["episodes"]["data_files"] == [{"split": "preview", "path": PREVIEW_EPISODES}]
    assert configs["episodes"]["default"] is True and configs["tasks"]["data_files"][0]["path"] == PREVIEW_TASKS
    for c in meta["configs"]:  # every file a config names is in the commit, and is Parquet
        for f in c["data_files"]:
            assert files[f["path"]][:4] == b"PAR1"
    episodes = pa.read_table(io.BytesIO(files[PREVIEW_EPISODES]))
    assert episodes.column_names == ["episode", "step", "task_id", "task", "obs", "action", "reward"]
    assert sorted(set(episodes.column("episode").to_pylist())) == [0, 1, 2, 3, 4]
    assert [r["task"] for r in pa.read_table(io.BytesIO(files[PREVIEW_TASKS])).to_pylist()] == [
        "walker-walk",
        "mw-reach",
    ]
    assert "first 5 of 6 episodes" in section(card, "Dataset") and "pwmctl data export" in card
    assert 'api.open_dataset("datasets/me/mix@v1")' in card

    fresh = tmp_path / "fresh"
    out = run(fresh, "pull", "datasets/me/mix@v1", "--hub-endpoint", fake_hub.url).stdout
    assert "pulled dataset/mix:v1" in out
    pulled = Registry(fresh).resolve("dataset/mix")
    assert pulled.manifest["files"] == Registry(tmp_path).resolve(ref).manifest["files"]
    assert not (pulled.path / "preview").exists()


def test_push_and_pull_draw_no_progress_bars_when_stderr_is_no_terminal(tmp_path, fake_hub):
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    reg = Registry(tmp_path)
    ref = publish(reg, "dataset", "many", zarr_files(n_chunks=40), metrics={"episodes": 1}).ref  # 40 files
    enable_progress_bars()  # as outside the tests: huggingface_hub would draw one bar per file
    try:
        push = run(tmp_path, "push", ref, "--repo", "me/many", "--hub-endpoint", fake_hub.url)
        pull_out = run(tmp_path / "fresh", "pull", "datasets/me/many@v1", "--hub-endpoint", fake_hub.url)
    finally:
        disable_progress_bars()
    lines = push.stderr.strip().splitlines()
    assert len(lines) <= 2 and f"pushing {ref} to me/many as v1" in push.stderr, push.stderr  # + no-preview note
    assert pull_out.stderr == "" and "pulled dataset/many:v1" in pull_out.stdout
    assert not re.search(r"\d+%\||it/s|B/s", push.stderr), push.stderr


def test_push_rejects_a_bad_license_in_one_line(tmp_path, fake_hub):
    reg = Registry(tmp_path)
    ref = publish(reg, "dataset", "d", zarr_files()).ref
    result = run(
        tmp_path, "push", ref, "--repo", "me/d", "--license", "Apache 2", "--hub-endpoint", fake_hub.url, code=2
    )
    assert result.stderr.startswith("error: bad license 'Apache 2'") and result.stderr.count("\n") == 1
    assert fake_hub.requests == [] and Registry(tmp_path).remotes(ref) == []
    assert run(tmp_path, "config", "set", "hub.license", "MIT", code=2).stderr.startswith("error: hub.license")
    assert yaml.safe_load  # yaml is used by front_matter
