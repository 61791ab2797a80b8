"""registry.hub against the loopback fake Hub: push/pull round trips, cards, and every failure path.

The artifacts here are small synthetic ones (no training), so each test runs in well under a second.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
import yaml

from registry import IntegrityError, Registry
from registry.hub import (
    HubError,
    compare_files,
    default_repo,
    parse_hub_spec,
    plan_push,
    pull,
    push,
    unpushed,
    verify_remote,
)

pytest_plugins = ["fakehub"]  # the fake_hub fixture
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")  # inside huggingface_hub

TASK = "cartpole-balance"


def publish(reg: Registry, kind: str, name: str, files: dict[str, bytes], parents=(), metrics=None, config=None):
    with reg.stage(kind, name) as staging:
        for rel, data in files.items():
            (staging.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging.path / rel).write_bytes(data)
        return staging.publish(parents=list(parents), tasks=[TASK], metrics=metrics or {}, config=config or {})


def zarr_files(n_chunks: int = 3) -> dict[str, bytes]:
    """A dataset payload shaped like pwm-episodes: a root zarr.json with the format attributes and
    chunk files, some over the fake's LFS threshold."""
    attrs = {
        "format": "pwm-episodes",
        "format_version": 1,
        "task_set": {
            "name": TASK,
            "obs_dim": 5,
            "act_dim": 1,
            "tasks": [{"id": 8, "name": TASK, "obs_dim": 5, "act_dim": 1}],
        },
    }
    files = {"data.zarr/zarr.json": json.dumps({"attributes": attrs, "zarr_format": 3, "node_type": "group"}).encode()}
    for i in range(n_chunks):
        files[f"data.zarr/data/obs/c/{i}"] = os.urandom(64 if i % 2 else 3000)
    return files


def summaries_for(policy_ref: str) -> dict:
    return {
        "summaries": {
            policy_ref: {
                "label": policy_ref,
                "num_tasks": 1,
                "runs_per_task": 3,
                "score": "DMC: return / 1000",
                "tasks": {
                    TASK: {"n": 3, "return_mean": 812.5, "return_std": 12.25, "success_rate": None, "score_mean": 0.81}
                },
                "aggregate": {"iqm": {"value": 0.81, "lo": 0.79, "hi": 0.83}},
                "ci": {"level": 0.95},
            }
        }
    }


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    """dataset -> world model -> policy -> eval report, with a few bytes each."""
    reg = Registry(tmp_path / "home")
    data = publish(reg, "dataset", "cartpole", zarr_files(), metrics={"episodes": 2, "transitions": 1000})
    wm = publish(
        reg,
        "worldmodel",
        "wm",
        {"model.safetensors": os.urandom(4000), "config.yaml": b"latent_dim: 8\n"},
        parents=[data.ref],
        config={"model": {"latent_dim": 8, "task_set": "mt30"}},
    )
    policy = publish(
        reg,
        "policy",
        "cartpole",
        {"policy.safetensors": os.urandom(2000), "policy.yaml": b"obs_dim: 5\n"},
        parents=[wm.ref, data.ref],
        config={"extract": {"steps": 10, "horizon": 16}},
    )
    publish(
        reg,
        "report",
        "eval-cartpole",
        {"results.json": json.dumps(summaries_for(policy.ref)).encode()},
        parents=[policy.ref],
    )
    return reg


def state_of(reg: Registry) -> tuple:
    """What a failed operation must leave unchanged: index rows, version folders, tmp/."""
    with sqlite3.connect(reg.index_path) as db:
        rows = [db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in ("artifacts", "remotes", "lines")]
    folders = sorted(str(p.relative_to(reg.home)) for p in reg.artifacts_dir.rglob("*"))
    tmp = sorted(p.name for p in reg.tmp_dir.iterdir()) if reg.tmp_dir.exists() else []
    return rows, folders, tmp


def push_ref(reg: Registry, ref: str, repo: str, hub):
    return push(reg, plan_push(reg, ref, repo, endpoint=hub.url))


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


# ---- push ----------------------------------------------------------------------------------


def test_push_is_one_tagged_commit_with_payload_manifest_and_card(reg, fake_hub):
    result = push_ref(reg, "policy/cartpole", "me/cartpole", fake_hub)
    assert not result.already and result.remote.tag == "v1" and result.remote.repo_type == "model"
    repo = fake_hub.repo("me/cartpole")
    assert repo.tags == {"v1": result.remote.commit_sha} == {"v1": repo.branches["main"]}
    files = fake_hub.files("me/cartpole", "v1")
    local = reg.resolve("policy/cartpole")
    assert set(files) == {".gitattributes", "README.md", "manifest.json", *local.manifest["files"]}
    assert all(files[p] == (local.path / p).read_bytes() for p in local.manifest["files"])
    assert reg.remotes(local.ref)[0].commit_sha == result.remote.commit_sha
    commits = [r for r in fake_hub.requests if r == ("POST", "/api/models/me/cartpole/commit/main")]
    assert len(commits) == 1
    again = push_ref(reg, "policy/cartpole", "me/cartpole", fake_hub)  # recorded: no network, no commit
    assert again.already and len(repo.commits) == 2


def test_cards_have_valid_front_matter_with_model_index_and_dataset_facts(reg, fake_hub):
    data = push_ref(reg, "dataset/cartpole", "me/cartpole-data", fake_hub)
    push_ref(reg, "worldmodel/wm", "me/wm", fake_hub)
    plan = plan_push(reg, "policy/cartpole", "me/cartpole", endpoint=fake_hub.url)
    card = next(f.content for f in plan.files if f.path == "README.md").decode()
    meta = front_matter(card)
    assert meta["library_name"] == "pwmctl" and TASK in meta["tags"] and meta["pwm"]["tasks"] == [TASK]
    assert meta["datasets"] == ["me/cartpole-data"] and meta["base_model"] == ["me/wm"]
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"]["name"] == TASK and result["metrics"][0] == {
        "type": "mean_reward",
        "value": "812.50 +/- 12.25",
        "name": "mean_reward",
    }
    assert f"pwmctl pull me/cartpole@v1 --repo-type model --hub-endpoint {fake_hub.url}" in card
    assert "pwmctl eval policy/cartpole" in card and data.remote.hub_id in card  # lineage with Hub ids

    data_card = fake_hub.files("me/cartpole-data", "v1", repo_type="dataset")["README.md"].decode()
    meta = front_matter(data_card)
    assert meta["library_name"] == "pwmctl" and meta["pwm"]["format_version"] == 1
    assert "reinforcement-learning" in meta["task_categories"]
    for fact in ("pwm-episodes version 1", "episodes: 2", "transitions: 1000", f"{TASK} (id 8)"):
        assert fact in data_card
    assert "pwmctl pull me/cartpole-data@v1 --repo-type dataset" in data_card


def test_dry_run_plan_lists_files_and_touches_nothing(reg, fake_hub):
    before = state_of(reg)
    plan = plan_push(reg, "worldmodel/wm", "me/wm", endpoint=fake_hub.url)
    doc = plan.to_dict()
    assert (doc["repo"], doc["repo_type"], doc["tag"]) == ("me/wm", "model", "v1")
    entries = {f["path"]: f for f in doc["files"]}
    assert set(entries) == {"model.safetensors", "config.yaml", "manifest.json", "README.md"}
    local = reg.resolve("worldmodel/wm").manifest["files"]["model.safetensors"]
    assert (entries["model.safetensors"]["sha256"], entries["model.safetensors"]["size"]) == (local["sha256"], 4000)
    assert fake_hub.requests == [] and state_of(reg) == before


def test_a_zarr_dataset_of_many_files_is_still_one_commit(tmp_path, fake_hub):
    reg = Registry(tmp_path / "home")
    publish(reg, "dataset", "big", zarr_files(n_chunks=300), metrics={"episodes": 300, "transitions": 30000})
    push_ref(reg, "dataset/big", "me/big", fake_hub)
    assert [r for r in fake_hub.requests if "/commit/" in r[1]] == [("POST", "/api/datasets/me/big/commit/main")]
    assert len(fake_hub.files("me/big", "v1", repo_type="dataset")) == 301 + 3


def test_next_version_replaces_the_files_of_the_previous_one(tmp_path, fake_hub):
    reg = Registry(tmp_path / "home")
    publish(reg, "dataset", "d", {"a.bin": b"a", "old.bin": b"old"})
    publish(reg, "dataset", "d", {"a.bin": b"a", "new.bin": b"new"})
    push_ref(reg, "dataset/d:v1", "me/d", fake_hub)
    push_ref(reg, "dataset/d:v2", "me/d", fake_hub)
    assert "old.bin" in fake_hub.files("me/d", "v1", repo_type="dataset")
    assert {"new.bin", "a.bin"} <= set(fake_hub.files("me/d", "v2", repo_type="dataset"))
    assert "old.bin" not in fake_hub.files("me/d", "v2", repo_type="dataset")
    fresh = Registry(tmp_path / "fresh")
    pulled = pull(fresh, "me/d@v2", endpoint=fake_hub.url).artifact
    assert set(pulled.manifest["files"]) == {"a.bin", "new.bin"}


def test_an_existing_tag_is_never_moved(reg, fake_hub, tmp_path):
    push_ref(reg, "policy/cartpole", "me/cartpole", fake_hub)
    other = Registry(tmp_path / "other")  # another machine's policy/cartpole:v1, other weights
    publish(other, "policy", "cartpole", {"policy.safetensors": b"different", "policy.yaml": b"x: 1\n"})
    before, commits = state_of(other), dict(fake_hub.repo("me/cartpole").commits)
    with pytest.raises(
        HubError, match="already has tag v1 .* holding policy/cartpole:v1 with payload sha256 .* never moves a tag"
    ) as e:
        push_ref(other, "policy/cartpole", "me/cartpole", fake_hub)
    assert "\n" not in str(e.value)
    assert fake_hub.repo("me/cartpole").commits == commits and state_of(other) == before


def test_the_same_artifact_pushed_from_elsewhere_is_recognised(reg, fake_hub, tmp_path):
    first = push_ref(reg, "policy/cartpole", "me/cartpole", fake_hub)
    fresh = Registry(tmp_path / "fresh")
    pulled = pull(fresh, "me/cartpole@v1", endpoint=fake_hub.url).artifact
    with sqlite3.connect(fresh.index_path) as db:
        db.execute("DELETE FROM remotes")  # as if the copy had been made by other means
    again = push_ref(fresh, pulled.ref, "me/cartpole", fake_hub)
    assert again.already and again.remote.commit_sha == first.remote.commit_sha


def test_a_commit_by_someone_else_during_push_fails_cleanly(reg, fake_hub):
    push_ref(reg, "dataset/cartpole", "me/d", fake_hub)
    publish(reg, "dataset", "cartpole", zarr_files(), metrics={"episodes": 1, "transitions": 500})
    fake_hub.before_commit = lambda: fake_hub.commit_files("me/d", {"notes.txt": b"mine"}, repo_type="dataset")
    before = state_of(reg)
    with pytest.raises(HubError, match="changed while pushing .* run the push again"):
        push_ref(reg, "dataset/cartpole:v2", "me/d", fake_hub)
    assert set(fake_hub.repo("me/d", "dataset").tags) == {"v1"} and state_of(reg) == before


def test_a_repo_holding_another_artifact_is_refused(reg, fake_hub):
    push_ref(reg, "worldmodel/wm", "me/x", fake_hub)
    with pytest.raises(HubError, match="holds worldmodel/wm, not policy/cartpole"):
        push_ref(reg, "policy/cartpole", "me/x", fake_hub)


def test_auth_and_network_failures_are_one_line_each(reg, fake_hub):
    fake_hub.token = "hf_the_right_one"
    before = state_of(reg)
    with pytest.raises(HubError, match=r"refused .* \(HTTP 401\): log in with `hf auth login`") as e:
        push_ref(reg, "policy/cartpole", "me/cartpole", fake_hub)
    assert "\n" not in str(e.value)
    down = fake_hub.dead_endpoint()
    with pytest.raises(HubError, match=f"cannot reach the Hub at {down}") as e:
        push(reg, plan_push(reg, "policy/cartpole", "me/cartpole", endpoint=down))
    assert "\n" not in str(e.value)
    with pytest.raises(HubError, match=f"cannot reach the Hub at {down}"):
        pull(reg, "me/cartpole@v1", endpoint=down)
    assert state_of(reg) == before


def test_bad_repo_ids_and_specs(reg):
    for bad in ("cartpole", "a/b/c", "me/../x", "me/x@", "me/" + "a" * 97, "a" * 300 + "/x", "me/x-", "me/a--b"):
        with pytest.raises(HubError, match="bad Hub"):
            parse_hub_spec(bad)
    assert parse_hub_spec("datasets/me/x@v2") == ("dataset", "me/x", "v2")
    assert parse_hub_spec("me/x") == (None, "me/x", None)
    assert parse_hub_spec("me/" + "a" * 96) == (None, "me/" + "a" * 96, None)
    with pytest.raises(HubError, match="bad Hub repo"):
        plan_push(reg, "policy/cartpole", "not a repo")
    publish(reg, "report", "notes", {"README.md": b"mine"})
    with pytest.raises(HubError, match="holds a top-level README.md, which the Hub commit needs"):
        plan_push(reg, "report/notes", "me/notes")


# ---- pull ----------------------------------------------------------------------------------


def test_round_trip_is_byte_identical_and_links_lineage(reg, fake_hub, tmp_path):
    for ref, repo in (
        ("dataset/cartpole", "me/cartpole"),
        ("worldmodel/wm", "me/wm"),
        ("policy/cartpole", "me/cartpole"),
    ):
        push_ref(reg, ref, repo, fake_hub)
    fresh = Registry(tmp_path / "fresh")
    publish(fresh, "policy", "cartpole", {"policy.safetensors": b"a local one"})  # the pull becomes v2
    got = pull(fresh, "me/cartpole@v1", endpoint=fake_hub.url, repo_type="model")
    assert got.artifact.ref == "policy/cartpole:v2" and got.linked == []
    assert sorted(got.hub_only) == ["datasets/me/cartpole@v1", "me/wm@v1"]
    node = fresh.lineage(got.artifact.ref)
    assert [(p.ref, p.exists, [r.hub_id for r in p.remotes]) for p in node.parents] == [
        ("worldmodel/wm:v1", False, ["me/wm@v1"]),
        ("dataset/cartpole:v1", False, ["datasets/me/cartpole@v1"]),
    ]

    data = pull(fresh, "me/cartpole@v1", endpoint=fake_hub.url, repo_type="dataset").artifact
    wm = pull(fresh, "me/wm", endpoint=fake_hub.url)  # auto-detected model repo, head of main
    assert wm.linked == [data.ref] and wm.remote.tag == "v1"
    node = fresh.lineage(got.artifact.ref)  # parents pulled later are linked now
    assert [(p.ref, p.exists) for p in node.parents] == [("worldmodel/wm:v1", True), ("dataset/cartpole:v1", True)]
    assert node.parents[0].parents[0].ref == data.ref

    for ref, copy in (
        ("dataset/cartpole:v1", data),
        ("worldmodel/wm:v1", wm.artifact),
        ("policy/cartpole:v1", got.artifact),
    ):
        mine = reg.resolve(ref)
        assert mine.manifest["files"] == copy.manifest["files"]
        assert all((mine.path / p).read_bytes() == (copy.path / p).read_bytes() for p in mine.manifest["files"])
        assert fresh.verify(copy.ref) == []
    assert got.artifact.manifest["code_version"] == reg.resolve("policy/cartpole").manifest["code_version"]
    assert got.artifact.manifest["extra"]["hub"]["ref"] == "policy/cartpole:v1"


def test_parents_are_linked_by_hub_commit_or_by_payload(reg, fake_hub, tmp_path):
    push_ref(reg, "dataset/cartpole", "me/d", fake_hub)
    push_ref(reg, "worldmodel/wm", "me/wm", fake_hub)
    # the world model's own registry has the dataset (no Hub row needed: same kind/name and payload)
    same = pull(reg, "me/wm@v1", endpoint=fake_hub.url)
    assert same.already and same.artifact.ref == "worldmodel/wm:v1"
    fresh = Registry(tmp_path / "fresh")
    publish(
        fresh,
        "dataset",
        "cartpole",
        {
            p: (reg.resolve("dataset/cartpole").path / p).read_bytes()
            for p in reg.resolve("dataset/cartpole").manifest["files"]
        },
    )
    got = pull(fresh, "me/wm@v1", endpoint=fake_hub.url)
    assert got.linked == ["dataset/cartpole:v1"] and got.artifact.parents == ["dataset/cartpole:v1"]
    assert fresh.children("dataset/cartpole:v1")[0].ref == got.artifact.ref
    fresh.remove("dataset/cartpole:v1", force=True)
    [parent] = fresh.lineage(got.artifact.ref).parents  # still known by its Hub id
    assert not parent.exists and [r.hub_id for r in parent.remotes] == ["datasets/me/d@v1"]


def test_second_pull_of_a_commit_touches_no_network(reg, fake_hub, tmp_path, monkeypatch):
    first = push_ref(reg, "policy/cartpole", "me/cartpole", fake_hub)
    fresh = Registry(tmp_path / "fresh")
    pulled = pull(fresh, "me/cartpole@v1", endpoint=fake_hub.url).artifact
    fake_hub.stop()
    for spec in ("me/cartpole@v1", f"me/cartpole@{first.remote.commit_sha}"):
        again = pull(fresh, spec, endpoint=fake_hub.url)
        assert again.already and again.artifact.ref == pulled.ref
    assert pull(fresh, "me/cartpole", endpoint=fake_hub.url, offline=True).artifact.ref == pulled.ref
    with pytest.raises(HubError, match="--offline forbids downloading"):
        pull(fresh, "me/other@v1", endpoint=fake_hub.url, offline=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # huggingface_hub's switch means the same
    with pytest.raises(HubError, match="--offline forbids downloading"):
        pull(fresh, "me/other@v1", endpoint=fake_hub.url)
    assert len(fresh.list()) == 1


def test_tampered_or_truncated_files_fail_listing_them_and_register_nothing(reg, fake_hub, tmp_path):
    push_ref(reg, "worldmodel/wm", "me/wm", fake_hub)
    fake_hub.corrupt("me/wm", "model.safetensors")
    fake_hub.corrupt("me/wm", "config.yaml", data=b"late")
    fresh = Registry(tmp_path / "fresh")
    publish(fresh, "dataset", "unrelated", {"x": b"x"})
    before = state_of(fresh)
    with pytest.raises(IntegrityError) as e:
        pull(fresh, "me/wm@v1", endpoint=fake_hub.url)
    message = str(e.value)
    assert "2 bad files" in message and "config.yaml (size 4 bytes, expected 14)" in message
    assert "changed: model.safetensors (sha256" in message and "nothing was registered" in message
    assert "\n" not in message and state_of(fresh) == before


def test_missing_revision_and_missing_repo(reg, fake_hub, tmp_path):
    push_ref(reg, "policy/cartpole", "me/cartpole", fake_hub)
    fresh = Registry(tmp_path / "fresh")
    with pytest.raises(HubError, match="has no revision 'v9': its tags are v1"):
        pull(fresh, "me/cartpole@v9", endpoint=fake_hub.url)
    with pytest.raises(HubError, match="no model or dataset repo me/nothing"):
        pull(fresh, "me/nothing", endpoint=fake_hub.url)
    push_ref(reg, "dataset/cartpole", "me/cartpole", fake_hub)  # same name, other repo type
    with pytest.raises(HubError, match="both a model and a dataset repo me/cartpole .* --repo-type"):
        pull(fresh, "me/cartpole@v1", endpoint=fake_hub.url)
    assert fresh.list() == []


def test_a_repo_not_pushed_by_pwmctl_is_refused(fake_hub, tmp_path):
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=fake_hub.url)
    api.create_repo("someone/model")
    api.create_commit("someone/model", [CommitOperationAdd("weights.bin", b"w")], commit_message="x")
    with pytest.raises(HubError, match="no valid manifest.json: it was not pushed by pwmctl"):
        pull(Registry(tmp_path / "fresh"), "someone/model", endpoint=fake_hub.url)


# ---- verify --remote, push-all planning ----------------------------------------------------


def test_verify_remote_compares_with_the_pushed_manifest(reg, fake_hub):
    push_ref(reg, "worldmodel/wm", "me/wm", fake_hub)
    [(remote, problems)] = verify_remote(reg, "worldmodel/wm")
    assert remote.hub_id == "me/wm@v1" and problems == []
    manifest = json.loads(fake_hub.files("me/wm")["manifest.json"])
    manifest["files"]["config.yaml"]["sha256"] = "0" * 64
    fake_hub.corrupt("me/wm", "manifest.json", json.dumps(manifest).encode())
    [(_, problems)] = verify_remote(reg, "worldmodel/wm")
    assert [(p.path, p.problem) for p in problems] == [("config.yaml", "changed")]
    with pytest.raises(HubError, match="no Hub copy recorded: push it first"):
        verify_remote(reg, "dataset/cartpole")
    assert compare_files({"a": {"sha256": "1", "size": 1}}, {"b": {"sha256": "1", "size": 1}})[0].problem == "missing"


def test_push_all_order_and_repo_names(reg, fake_hub):
    assert [a.ref for a in unpushed(reg, fake_hub.url)] == [
        "dataset/cartpole:v1",
        "worldmodel/wm:v1",
        "policy/cartpole:v1",
    ]  # reports go into policy cards
    publish(reg, "worldmodel", "cartpole", {"model.safetensors": b"m"})  # clashes with policy/cartpole
    names = {a.ref: default_repo(reg, a, "me", fake_hub.url) for a in reg.list()}
    assert names["dataset/cartpole:v1"] == "me/cartpole"  # a dataset repo: no clash
    assert names["policy/cartpole:v1"] == "me/cartpole"
    assert names["worldmodel/cartpole:v1"] == "me/cartpole-worldmodel"
    push_ref(reg, "worldmodel/wm", "me/elsewhere", fake_hub)
    publish(reg, "worldmodel", "wm", {"model.safetensors": b"v2"})
    assert default_repo(reg, reg.resolve("worldmodel/wm:v2"), "me", fake_hub.url) == "me/elsewhere"
    assert default_repo(reg, reg.resolve("worldmodel/wm:v2"), None, fake_hub.url) == "me/elsewhere"
    assert default_repo(reg, reg.resolve("dataset/cartpole"), None, fake_hub.url) is None  # needs a namespace
    assert "worldmodel/wm:v1" not in [a.ref for a in unpushed(reg, fake_hub.url)]
