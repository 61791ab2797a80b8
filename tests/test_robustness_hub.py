"""Pulls of manifests this pwmctl must not trust: from a newer pwmctl, malformed, claiming a future
`created`, or pulled three times at once. Each refusal is one error line, exit 2, nothing changed."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from helpers import run
from test_hub import TASK, publish, push_ref, state_of

from pwmctl.commands.extract import _choose_world_model
from pwmctl.commands.finetune import _choose_policy
from registry import Registry
from registry.hub import pull

pytest_plugins = ["fakehub"]  # the fake_hub fixture
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")  # inside huggingface_hub


@pytest.fixture
def source(tmp_path: Path) -> Registry:
    """A world model with a parent dataset, and a policy, to push."""
    reg = Registry(tmp_path / "source")
    data = publish(reg, "dataset", "cartpole", {"episodes.bin": os.urandom(100)})
    wm = publish(
        reg,
        "worldmodel",
        "wm",
        {"model.safetensors": os.urandom(2000), "config.yaml": b"latent_dim: 8\n"},
        parents=[data.ref],
    )
    publish(reg, "policy", "cartpole", {"policy.safetensors": os.urandom(500)}, parents=[wm.ref])
    return reg


@pytest.fixture
def fresh(tmp_path: Path) -> Registry:
    """The registry pulls go to, with one unrelated artifact so its index exists."""
    reg = Registry(tmp_path / "fresh")
    publish(reg, "dataset", "unrelated", {"x": b"x"})
    return reg


def _one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return lines[0]


def _edit_pushed_manifest(hub, repo: str, edit) -> None:
    manifest = json.loads(hub.files(repo)["manifest.json"])
    edit(manifest)
    hub.corrupt(repo, "manifest.json", json.dumps(manifest).encode())


def _pull_cli(fresh: Registry, hub, spec: str):
    return run(fresh.home, "pull", spec, "--hub-endpoint", hub.url, code=None)


def test_a_manifest_from_a_newer_pwmctl_is_refused(source, fresh, fake_hub):
    push_ref(source, "worldmodel/wm", "me/wm", fake_hub)
    _edit_pushed_manifest(fake_hub, "me/wm", lambda m: m.update(manifest_version=2, layout="something new"))
    before = state_of(fresh)
    line = _one_error_line(_pull_cli(fresh, fake_hub, "me/wm@v1"))
    assert "made by a newer pwmctl (manifest version 2" in line and "upgrade pwmctl" in line
    assert state_of(fresh) == before


def _set(key, value):
    return lambda m: m.update({key: value})


def _drop(key):
    return lambda m: m.pop(key)


def _file(path, entry):
    return lambda m: m["files"].update({path: entry})


MALFORMED = {
    "manifest_version as a string": (_set("manifest_version", "1"), "'manifest_version' is \"1\", not an integer"),
    "no kind": (_drop("kind"), "no 'kind'"),
    "no version": (_drop("version"), "no 'version'"),
    "no tasks": (_drop("tasks"), "no 'tasks'"),
    "name as a list": (_set("name", ["wm"]), "'name' is [\"wm\"], not a string"),
    "version as a string": (_set("version", "one"), "'version' is \"one\", not an integer"),
    "version 0": (_set("version", 0), "'version' is 0"),
    "created as a number": (_set("created", 5), "'created' is 5, not a string"),
    "created not a time": (_set("created", "yesterday"), "not an ISO 8601 time"),
    "tasks as a string": (_set("tasks", TASK), "'tasks' is \"cartpole-balance\", not a list"),
    "tasks of numbers": (_set("tasks", [5]), "'tasks' holds something else than names"),
    "parents of numbers": (_set("parents", [1]), "'parents' holds something else than names"),
    "config as a string": (_set("config", "x"), "'config' is \"x\", not a table"),
    "metrics as a list": (_set("metrics", [1, 2]), "'metrics' is [1, 2], not a table"),
    "extra as a number": (_set("extra", 3), "'extra' is 3, not a table"),
    "code_version as null": (_set("code_version", None), "'code_version' is null, not a table"),
    "files entry as a string": (_file("config.yaml", "abc"), '"config.yaml" has "abc", not {sha256, size}'),
    "files entry without sha256": (_file("config.yaml", {"size": 14}), "has sha256 null"),
    "files entry with a string size": (
        _file("config.yaml", {"sha256": "0" * 64, "size": "14"}),
        'has size "14", not a byte count',
    ),
    "files path climbing out": (
        _file("../../evil", {"sha256": "0" * 64, "size": 1}),
        '"../../evil" is not a relative path',
    ),
    "files path absolute": (_file("/etc/passwd", {"sha256": "0" * 64, "size": 1}), "is not a relative path"),
    "lineage as a string": (_set("lineage", "dataset/cartpole:v1"), "'lineage' is \"dataset/cartpole:v1\""),
    "lineage of numbers": (_set("lineage", [5]), "lineage entry 5 is not"),
    "lineage hub as a string": (_set("lineage", [{"ref": "dataset/cartpole:v1", "hub": "me/d"}]), "lineage entry"),
    "lineage hub without commit": (
        _set("lineage", [{"ref": "dataset/x:v1", "hub": {"repo": "me/d"}}]),
        "lineage entry",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_pulled_manifest_is_one_error_line(source, fresh, fake_hub, case):
    edit, expected = MALFORMED[case]
    push_ref(source, "worldmodel/wm", "me/wm", fake_hub)
    _edit_pushed_manifest(fake_hub, "me/wm", edit)
    before = state_of(fresh)
    line = _one_error_line(_pull_cli(fresh, fake_hub, "me/wm@v1"))
    assert "me/wm@v1: its manifest.json is malformed" in line and expected in line, line
    assert "nothing was registered" in line and state_of(fresh) == before


def test_a_future_created_time_does_not_make_a_pulled_version_the_default(source, fresh, fake_hub):
    push_ref(source, "worldmodel/wm", "me/wm", fake_hub)
    push_ref(source, "policy/cartpole", "me/cartpole", fake_hub)
    for repo in ("me/wm", "me/cartpole"):
        _edit_pushed_manifest(fake_hub, repo, _set("created", "2999-01-01T00:00:00+00:00"))
    pulled_wm = pull(fresh, "me/wm@v1", endpoint=fake_hub.url).artifact
    pulled_policy = pull(fresh, "me/cartpole@v1", endpoint=fake_hub.url).artifact
    assert pulled_wm.created.startswith("2999")  # kept as the pusher's claim, shown as such
    local_wm = publish(fresh, "worldmodel", "mine", {"model.safetensors": b"local"})
    local_policy = publish(fresh, "policy", "mine", {"policy.safetensors": b"local"})
    assert _choose_world_model(fresh, TASK, None).ref == local_wm.ref  # registered here last
    assert _choose_policy(fresh, TASK, None).ref == local_policy.ref
    later = pull(fresh, "me/wm@v1", endpoint=fake_hub.url, offline=True)  # already here: order unchanged
    assert later.already and _choose_world_model(fresh, TASK, None).ref == local_wm.ref
    assert pulled_wm.registered < local_wm.registered and pulled_policy.registered < local_policy.registered


def test_concurrent_pulls_of_one_commit_register_it_once(source, fresh, fake_hub, monkeypatch):
    import huggingface_hub

    push_ref(source, "worldmodel/wm", "me/wm", fake_hub)
    all_downloaded = threading.Barrier(3, timeout=60)
    real_download = huggingface_hub.snapshot_download

    def download_then_wait(*args, **kwargs):  # every pull is past its "already here?" check
        path = real_download(*args, **kwargs)
        all_downloaded.wait()
        return path

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download_then_wait)
    results, errors = [], []

    def pull_once():
        try:
            results.append(pull(fresh, "me/wm@v1", endpoint=fake_hub.url))
        except Exception as e:  # reported below, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=pull_once) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(r.already for r in results) == [False, True, True]
    assert {r.artifact.ref for r in results} == {"worldmodel/wm:v1"}
    assert [a.ref for a in fresh.list(kind="worldmodel")] == ["worldmodel/wm:v1"]
    assert all(r.remote.commit_sha == results[0].remote.commit_sha for r in results)
    assert list(fresh.tmp_dir.iterdir()) == []
