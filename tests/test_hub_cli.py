"""`pwmctl push | pull`, `show --lineage`, `verify --remote` as a user runs them, on real tiny
artifacts (dataset -> 1M world model -> policy -> eval report) and the loopback fake Hub."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from helpers import run, run_json
from test_hub import publish, state_of

from registry import Registry

pytest_plugins = ["fakehub"]  # the fake_hub fixture
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")  # inside huggingface_hub

TASK = "cartpole-balance"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A home with dataset/cartpole -> worldmodel/wm -> policy/cartpole and an eval report of it."""
    home = tmp_path_factory.mktemp("source")
    run(home, "collect", TASK, "-n", "2", "--name", "cartpole")
    run(
        home,
        "pretrain",
        "--tasks",
        TASK,
        "--size",
        "1M",
        "--batch-size",
        "8",
        "--horizon",
        "3",
        "--steps",
        "4",
        "--set",
        "val_every=10",
        "--set",
        "val_batches=1",
        "--name",
        "wm",
    )
    run(
        home,
        "extract",
        TASK,
        "--batch-size",
        "8",
        "--set",
        "horizon=4",
        "--set",
        "return_states=4",
        "--eval-every",
        "2",
        "--eval-episodes",
        "1",
        "--steps",
        "2",
        "--name",
        "cartpole",
    )
    run(home, "eval", "policy/cartpole", "--seeds", "2", "--reps", "100")
    return home


def one_error_line(result) -> str:
    """The error, checked to be one line, the last on stderr (after any progress lines), exit code 2."""
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert result.exit_code == 2 and errors == lines[-1:], result.stderr
    return errors[0]


def same_payload(home_a: Path, ref_a: str, home_b: Path, ref_b: str) -> None:
    a, b = Registry(home_a).resolve(ref_a), Registry(home_b).resolve(ref_b)
    assert a.manifest["files"] == b.manifest["files"]
    for rel in a.manifest["files"]:
        assert (a.path / rel).read_bytes() == (b.path / rel).read_bytes(), rel


def test_dataset_world_model_and_policy_round_trip_with_lineage(source, fake_hub, tmp_path):
    hub = ["--hub-endpoint", fake_hub.url]
    run(source, "config", "set", "hub.namespace", "me")
    plan = run_json(source, "push", "--dry-run", *hub)
    assert [(p["ref"], p["repo"], p["repo_type"], p["tag"]) for p in plan["plans"]] == [
        ("dataset/cartpole:v1", "me/cartpole", "dataset", "v1"),
        ("worldmodel/wm:v1", "me/wm", "model", "v1"),
        ("policy/cartpole:v1", "me/cartpole", "model", "v1"),
    ]  # lineage order; the report is in the policy card
    assert fake_hub.requests == []
    human = run(source, "push", "--dry-run", *hub).stdout
    assert "would push worldmodel/wm:v1 to model repo me/wm as tag v1" in human and "sha256 " in human

    pushed = run_json(source, "push", *hub)["pushed"]
    assert [(p["ref"], p["repo"], p["tag"], p["already"]) for p in pushed] == [
        ("dataset/cartpole:v1", "me/cartpole", "v1", False),
        ("worldmodel/wm:v1", "me/wm", "v1", False),
        ("policy/cartpole:v1", "me/cartpole", "v1", False),
    ]
    assert "nothing to push" in run(source, "push", *hub).stderr
    tree = run(source, "show", "policy/cartpole", "--lineage").stdout
    assert "worldmodel/wm:v1  hub: me/wm@v1" in tree and "dataset/cartpole:v1  hub: datasets/me/cartpole@v1" in tree

    card = fake_hub.files("me/cartpole", "v1")["README.md"].decode()
    meta = yaml.safe_load(card.split("---\n", 2)[1])
    assert meta["library_name"] == "pwmctl" and meta["datasets"] == ["me/cartpole"] and TASK in meta["tags"]
    assert meta["model-index"][0]["results"][0]["metrics"][0]["type"] == "mean_reward"

    # a fresh home pulls the policy first: its parents are Hub ids until they are pulled too
    fresh = tmp_path / "fresh"
    run(fresh, "config", "set", "hub.endpoint", fake_hub.url)
    result = run(fresh, "pull", "me/cartpole@v1", "--repo-type", "model")
    assert "pulled policy/cartpole:v1 from me/cartpole@v1" in result.stdout
    assert "parent not here: me/wm@v1" in result.stdout
    assert "(not in this registry; on the Hub: me/wm@v1" in run(fresh, "show", "policy/cartpole", "--lineage").stdout
    assert run_json(fresh, "pull", "me/wm@v1")["parents"] == []
    assert run_json(fresh, "pull", "datasets/me/cartpole@v1")["artifact"] == "dataset/cartpole:v1"
    tree = run(fresh, "show", "policy/cartpole", "--lineage").stdout
    assert "not in this registry" not in tree
    assert re.search(
        r"└─ worldmodel/wm:v1  hub: me/wm@v1 \(\w{8}\)\n\s+└─ dataset/cartpole:v1  hub: "
        r"datasets/me/cartpole@v1",
        tree,
    ), tree
    for kind_name in ("dataset/cartpole:v1", "worldmodel/wm:v1", "policy/cartpole:v1"):
        same_payload(source, kind_name, fresh, kind_name)
        doc = run_json(fresh, "verify", kind_name, "--remote")
        assert doc["ok"] and doc["remotes"][0]["ok"]
    assert "already have me/cartpole@v1" in run(fresh, "pull", "me/cartpole@v1", "--repo-type", "model").stdout
    assert run_json(fresh, "pull", "me/wm@v1", "--offline")["already"]
    assert run(fresh, "eval", "policy/cartpole", "--seeds", "1", "--reps", "100").exit_code == 0  # it acts

    # the card's own pull command works as printed (PWMCTL_HUB_ENDPOINT is not needed: the card names it)
    command = next(line for line in card.splitlines() if line.startswith("pwmctl pull "))
    third = tmp_path / "third"
    assert "pulled policy/cartpole:v1" in run(third, *command.split()[1:]).stdout


def test_push_without_a_namespace_says_how_to_set_one(tmp_path):
    line = one_error_line(run(tmp_path / "home", "push", code=None))
    assert "pwmctl config set hub.namespace NAME" in line and "--namespace" in line


def test_failures_give_one_line_and_leave_the_registry_unchanged(source, fake_hub, tmp_path):
    hub = ["--hub-endpoint", fake_hub.url]
    run(source, "push", "policy/cartpole", "--repo", "me/p", *hub)

    other = Registry(tmp_path / "other")  # someone else's policy/cartpole:v1 and a dataset line
    publish(other, "policy", "cartpole", {"policy.safetensors": b"other weights"})
    publish(other, "dataset", "d", {"a.bin": b"a"})
    run(other.home, "push", "dataset/d", "--repo", "me/d", *hub)
    publish(other, "dataset", "d", {"a.bin": b"b"})
    before = state_of(other)
    assert "never moves a tag" in one_error_line(
        run(other.home, "push", "policy/cartpole", "--repo", "me/p", *hub, code=None)
    )
    fake_hub.before_commit = lambda: fake_hub.commit_files("me/d", {"x": b"x"}, repo_type="dataset")
    assert "changed while pushing" in one_error_line(
        run(other.home, "push", "dataset/d:v2", "--repo", "me/d", *hub, code=None)
    )
    line = one_error_line(run(other.home, "pull", "me/p@v7", *hub, code=None))
    assert "has no revision 'v7': its tags are v1" in line
    down = ["--hub-endpoint", fake_hub.dead_endpoint()]
    for args in (["push", "policy/cartpole", "--repo", "me/q", *down], ["pull", "me/p@v1", *down]):
        assert "cannot reach the Hub at http://127.0.0.1:" in one_error_line(run(other.home, *args, code=None))
    fake_hub.corrupt("me/p", "policy.yaml", data=b"truncat")
    line = one_error_line(run(other.home, "pull", "me/p@v1", *hub, code=None))
    assert "1 bad files: changed: policy.yaml (size 7 bytes" in line and "nothing was registered" in line
    assert "--offline forbids" in one_error_line(run(other.home, "pull", "me/zzz@v1", "--offline", *hub, code=None))
    assert state_of(other) == before
    listing = json.loads(run(other.home, "--format", "json", "ls", "--all").stdout)["artifacts"]
    assert [a["ref"] for a in listing] == ["dataset/d:v2", "dataset/d:v1", "policy/cartpole:v1"]
