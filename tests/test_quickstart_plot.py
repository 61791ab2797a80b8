"""`pwmctl quickstart` end to end on a tiny budget, and `pwmctl plot` on what it made."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import run, run_json


@pytest.mark.slow
def test_quickstart_runs_the_pipeline_and_publishes_a_summary(tmp_path):
    home = tmp_path / "home"
    doc = run_json(
        home,
        "quickstart",
        "--budget-minutes",
        "1",
        "--finetune-share",
        "0.1",  # ~5 s: one round of 2 episodes and a few updates
        "--pretrain-steps",
        "4",
        "--extract-steps",
        "2",
        "--episodes",
        "2",
        "--seeds",
        "2",
    )
    assert doc["report"] == "report/quickstart-cartpole-swingup:v1"
    assert set(doc["stages_s"]) == {"collect", "pretrain", "extract", "finetune", "eval"}
    assert doc["iqm"]["lo"] <= doc["iqm"]["value"] <= doc["iqm"]["hi"]
    assert isinstance(doc["beats_random"], bool)
    summary = Path(doc["summary"]).read_text()
    assert "| random |" in summary and "fine-tune it online" in summary
    final = "policy/quickstart-cartpole-swingup:v2" if ", kept)" in summary else "policy/quickstart-cartpole-swingup:v1"
    extracted = run_json(home, "show", "policy/quickstart-cartpole-swingup:v1")["manifest"]["config"]["extract"]
    assert extracted["critic_iterations"] == 2  # the default extract recipe's (official: 8)
    assert final in summary and doc["policy"] == final
    assert doc["world_model"].startswith("worldmodel/quickstart-cartpole-swingup")
    shown = run_json(home, "show", doc["report"])
    files = set(shown["manifest"]["files"])
    assert {
        "summary.md",
        "worldmodel-quickstart-cartpole-swingup-v1.png",
        f"policy-quickstart-cartpole-swingup-{final[-2:]}.png",
        "report-eval-quickstart-cartpole-swingup-v1.png",
    } <= files
    assert sorted(shown["parents"]) == [final, "report/eval-quickstart-cartpole-swingup:v1"]
    for png in files - {"summary.md"}:
        assert (Path(shown["path"]) / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # plot: one PNG per artifact, named after it
    out = tmp_path / "plots"
    doc = run_json(
        home,
        "plot",
        "worldmodel/quickstart-cartpole-swingup",
        "policy/quickstart-cartpole-swingup",
        "report/eval-quickstart-cartpole-swingup",
        "--out",
        str(out),
    )
    assert [Path(p).name for p in doc["files"]] == [
        "worldmodel-quickstart-cartpole-swingup-v1.png",
        "policy-quickstart-cartpole-swingup-v2.png",  # the fine-tuned version, kept or not, is the newest
        "report-eval-quickstart-cartpole-swingup-v1.png",
    ]
    assert all(Path(p).stat().st_size > 10_000 for p in doc["files"])
    result = run(home, "plot", "dataset/quickstart-cartpole-swingup", code=2)
    assert "plot takes world models, policies and reports" in result.stderr


def test_quickstart_refuses_metaworld(tmp_path):
    result = run(tmp_path, "quickstart", "--task", "mw-reach", code=2)
    assert "DMC task" in result.stderr


@pytest.mark.slow
def test_quickstart_keeps_the_best_of_several_extractions(tmp_path):
    home = tmp_path / "home"
    doc = run_json(
        home,
        "quickstart",
        "--task",
        "cartpole-balance",
        "--budget-minutes",
        "1",
        "--extract-seeds",
        "2",
        "--pretrain-steps",
        "2",
        "--extract-steps",
        "2",
        "--episodes",
        "2",
        "--seeds",
        "2",
    )
    runs = doc["extractions"]
    assert [r["policy"] for r in runs] == [
        "policy/quickstart-cartpole-balance:v1",
        "policy/quickstart-cartpole-balance:v2",
    ]
    best = max(runs, key=lambda r: r["eval_return"])  # the first of equals
    assert doc["policy"] == best["policy"]
    seeds = [run_json(home, "show", r["policy"])["manifest"]["config"]["extract"]["seed"] for r in runs]
    assert seeds == [0, 1]
    summary = Path(doc["summary"]).read_text()
    assert "keep the best of 2 extractions" in summary and best["policy"] in summary
    assert run_json(home, "show", doc["report"])["manifest"]["metrics"]["extract_seeds"] == 2
