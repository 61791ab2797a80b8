"""The local artifact registry: refs, manifests, publish/resolve/remove, lineage, crash safety."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

import registry
from registry import (
    Artifact,
    ArtifactNotFound,
    FileProblem,
    IntegrityError,
    Ref,
    RefError,
    Registry,
    RegistryError,
    hash_tree,
    parse_ref,
    verify_tree,
)

SHA256_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SHA256_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "home")


def publish(reg: Registry, kind: str, name: str, files: Mapping[str, bytes] | None = None, **metadata) -> Artifact:
    """Stage `files` ({relpath: bytes}) and publish them as the next version of kind/name."""
    with reg.stage(kind, name) as staging:
        for rel, data in (files or {"payload.bin": b"abc"}).items():
            (staging.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging.path / rel).write_bytes(data)
        return staging.publish(**metadata)


# ---- refs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, default_kind, expected",
    [
        ("worldmodel/mt30-48m", None, Ref("worldmodel", "mt30-48m", None)),
        ("worldmodel/mt30-48m:v2", None, Ref("worldmodel", "mt30-48m", 2)),
        ("worldmodel/mt30-48m:2", None, Ref("worldmodel", "mt30-48m", 2)),
        ("worldmodel/mt30-48m:latest", None, Ref("worldmodel", "mt30-48m", None)),
        ("policy/walker_walk.seed1:v10", None, Ref("policy", "walker_walk.seed1", 10)),
        ("mt30-48m", "worldmodel", Ref("worldmodel", "mt30-48m", None)),
        ("mt30-48m:v3", "worldmodel", Ref("worldmodel", "mt30-48m", 3)),
        ("dataset/mt30", "worldmodel", Ref("dataset", "mt30", None)),  # an explicit kind wins
    ],
)
def test_parse_ref_accepts_the_documented_forms(text, default_kind, expected):
    assert parse_ref(text, default_kind) == expected


@pytest.mark.parametrize(
    "text, why",
    [
        ("x/y:z", "unknown kind 'x'"),
        ("mt30-48m", "no KIND/ prefix"),
        ("worldmodel/", "the name is empty"),
        ("worldmodel/MT30", "lowercase"),
        ("worldmodel/mt30 48m", "lowercase"),
        ("worldmodel/.hidden", "start with a letter or digit"),
        ("worldmodel/mt30:", "version ''"),
        ("worldmodel/mt30:v0", "version 'v0'"),
        ("worldmodel/mt30:vx", "version 'vx'"),
        ("worldmodel/mt30:v1:v2", "version 'v1:v2'"),
        ("a/b/c", "unknown kind 'a/b'"),
    ],
)
def test_parse_ref_rejects_bad_input_with_the_expected_form(text, why):
    with pytest.raises(RefError) as error:
        parse_ref(text)
    message = str(error.value)
    assert f"bad artifact ref {text!r}" in message and why in message
    assert "expected KIND/NAME[:vN], KIND one of dataset, worldmodel, policy, report" in message


@pytest.mark.parametrize("version", ["v99999999999999999999", "v9223372036854775808", "v" + "9" * 5000])
def test_parse_ref_refuses_a_version_too_large_for_the_index(version):
    with pytest.raises(RefError, match="is too large") as error:
        parse_ref(f"dataset/x:{version}")
    assert len(str(error.value)) < 400  # shortened: one readable line
    assert parse_ref("dataset/x:v9223372036854775807").version == 2**63 - 1
    with pytest.raises(RefError, match="from 1 to"):
        Ref("dataset", "x", 2**63)


def test_parse_ref_rejects_an_unknown_default_kind():
    with pytest.raises(RefError, match="unknown kind 'model'"):
        parse_ref("mt30", default_kind="model")


def test_ref_str_round_trips():
    assert str(Ref("policy", "walker-walk", 3)) == "policy/walker-walk:v3"
    assert str(Ref("policy", "walker-walk")) == "policy/walker-walk:latest"
    for ref in (Ref("policy", "walker-walk", 3), Ref("dataset", "mt30")):
        assert parse_ref(str(ref)) == ref


def test_ref_validates_when_built_directly():
    with pytest.raises(RefError, match="version 0"):
        Ref("policy", "walker-walk", 0)
    with pytest.raises(RefError, match="lowercase"):
        Ref("policy", "Walker", 1)


def test_registry_imports_neither_pwm_core_nor_pwmctl():
    code = "import sys, registry\nprint(any(m.split('.')[0] in ('pwm_core', 'pwmctl') for m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env_with_repo_on_path()
    )
    assert out.stdout.strip() == "False"


# ---- manifests --------------------------------------------------------------------------------


def test_hash_tree_matches_hand_computed_sha256(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "abc.txt").write_bytes(b"abc")
    (tmp_path / "sub" / "empty.bin").write_bytes(b"")
    (tmp_path / "manifest.json").write_text("{}")  # the manifest itself is never listed
    assert hash_tree(tmp_path) == {
        "abc.txt": {"sha256": SHA256_ABC, "size": 3},
        "sub/empty.bin": {"sha256": SHA256_EMPTY, "size": 0},
    }
    assert list(hash_tree(tmp_path)) == ["abc.txt", "sub/empty.bin"]


def test_hash_tree_streams_files_larger_than_one_block(tmp_path: Path):
    import hashlib

    data = bytes(range(256)) * (10 * 1024 + 7)  # 2.5 MiB + a bit: three reads
    (tmp_path / "big.bin").write_bytes(data)
    assert hash_tree(tmp_path)["big.bin"] == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def test_hash_tree_refuses_symbolic_links(tmp_path: Path):
    (tmp_path / "real.bin").write_bytes(b"abc")
    (tmp_path / "link.bin").symlink_to(tmp_path / "real.bin")
    with pytest.raises(IntegrityError, match="symbolic link"):
        hash_tree(tmp_path)


def test_verify_tree_reports_changed_missing_and_unexpected(tmp_path: Path):
    for rel in ("a.bin", "b.bin", "c.bin"):
        (tmp_path / rel).write_bytes(b"abc")
    manifest = {"files": hash_tree(tmp_path)}
    (tmp_path / "a.bin").write_bytes(b"abd")  # same size, other bytes
    (tmp_path / "b.bin").unlink()
    (tmp_path / "d.bin").write_bytes(b"")
    problems = verify_tree(tmp_path, manifest)
    assert [(p.path, p.problem) for p in problems] == [
        ("a.bin", "changed"),
        ("b.bin", "missing"),
        ("d.bin", "unexpected"),
    ]
    assert "sha256" in problems[0].detail


# ---- publish and resolve ----------------------------------------------------------------------


def test_publish_creates_v1_then_v2(reg: Registry):
    first = publish(reg, "dataset", "walker-walk")
    second = publish(reg, "dataset", "walker-walk")
    assert (first.ref, second.ref) == ("dataset/walker-walk:v1", "dataset/walker-walk:v2")
    assert second.path == reg.home / "artifacts" / "dataset" / "walker-walk" / "v2"
    assert (second.path / "payload.bin").read_bytes() == b"abc"
    assert list((reg.home / "tmp").iterdir()) == []  # the staging folder was moved, not copied


def test_manifest_records_files_and_metadata(reg: Registry):
    data = publish(reg, "dataset", "walker-walk")
    files = {"model.safetensors": b"", "cfg/config.yaml": b"abc"}
    wm = publish(
        reg,
        "worldmodel",
        "mt30-48m",
        files,
        parents=["dataset/walker-walk"],
        tasks=["walker-walk", "cheetah-run"],
        config={"lr": 3e-4},
        metrics={"loss": 0.5},
        extra={"seed": 1},
        code_version="0.1.0",
    )
    on_disk = json.loads((wm.path / "manifest.json").read_text())
    assert on_disk == wm.manifest
    assert on_disk["files"] == {
        "cfg/config.yaml": {"sha256": SHA256_ABC, "size": 3},
        "model.safetensors": {"sha256": SHA256_EMPTY, "size": 0},
    }
    assert (on_disk["kind"], on_disk["name"], on_disk["version"]) == ("worldmodel", "mt30-48m", 1)
    assert on_disk["created"].endswith("+00:00")
    assert wm.parents == [data.ref]  # pinned at publish time
    assert wm.tasks == ["walker-walk", "cheetah-run"]
    assert (wm.config, wm.metrics, on_disk["extra"]) == ({"lr": 3e-4}, {"loss": 0.5}, {"seed": 1})
    assert on_disk["code_version"]["pwmctl"] == "0.1.0"
    assert set(on_disk["code_version"]) == {"pwmctl", "git_sha", "git_dirty"}
    assert wm.size_bytes == 3


def test_resolve_latest_explicit_and_without_kind(reg: Registry):
    publish(reg, "worldmodel", "mt30-48m")
    publish(reg, "worldmodel", "mt30-48m")
    assert reg.resolve("worldmodel/mt30-48m").version == 2
    assert reg.resolve("worldmodel/mt30-48m:latest").version == 2
    assert reg.resolve("worldmodel/mt30-48m:v1").version == 1
    assert reg.resolve("worldmodel/mt30-48m:1").version == 1
    assert reg.resolve("mt30-48m", default_kind="worldmodel").version == 2
    assert reg.resolve(Ref("worldmodel", "mt30-48m", 1)).version == 1
    assert reg.latest("worldmodel", "mt30-48m").version == 2
    assert reg.latest("worldmodel", "other") is None


def test_resolve_suggests_close_names_and_other_kinds(reg: Registry):
    publish(reg, "worldmodel", "mt30-48m")
    publish(reg, "dataset", "walker-walk")
    with pytest.raises(ArtifactNotFound, match=r"did you mean worldmodel/mt30-48m\?"):
        reg.resolve("worldmodel/mt30-48n")
    with pytest.raises(ArtifactNotFound, match=r"did you mean dataset/walker-walk\?"):
        reg.resolve("policy/walker-walk")
    with pytest.raises(ArtifactNotFound, match=r"has versions v1; ask for one of those"):
        reg.resolve("worldmodel/mt30-48m:v7")
    with pytest.raises(ArtifactNotFound) as error:
        reg.resolve("report/nothing-like-it")
    assert str(error.value) == (
        f"no artifact report/nothing-like-it:latest in {reg.home}: "
        "`pwmctl ls report` lists what there is; publish or pull it first"
    )


def test_resolve_of_an_indexed_artifact_whose_folder_is_gone_is_an_integrity_error(reg: Registry):
    artifact = publish(reg, "policy", "walker-walk")
    os.rename(artifact.path, reg.home / "elsewhere")
    with pytest.raises(IntegrityError, match="its folder .* is gone"):
        reg.resolve(artifact.ref)


def test_find_returns_an_indexed_artifact_whose_folder_is_gone_and_remove_drops_it(reg: Registry):
    artifact = publish(reg, "policy", "walker-walk")
    os.rename(artifact.path, reg.home / "elsewhere")
    assert reg.find(artifact.ref) == reg.find("walker-walk:v1", default_kind="policy")
    reg.remove(artifact.ref)
    assert reg.list() == []


def test_list_by_kind_task_and_name_newest_first(reg: Registry):
    publish(reg, "dataset", "mt30", tasks=["walker-walk", "cheetah-run"])
    publish(reg, "worldmodel", "mt30-48m", tasks=["walker-walk"])
    publish(reg, "worldmodel", "mt30-48m", tasks=["walker-walk"])
    publish(reg, "worldmodel", "cheetah", tasks=["cheetah-run"])
    refs = lambda artifacts: [a.ref for a in artifacts]  # noqa: E731
    assert refs(reg.list()) == [
        "dataset/mt30:v1",
        "worldmodel/cheetah:v1",
        "worldmodel/mt30-48m:v2",
        "worldmodel/mt30-48m:v1",
    ]
    assert refs(reg.list(kind="worldmodel", task="walker-walk")) == ["worldmodel/mt30-48m:v2", "worldmodel/mt30-48m:v1"]
    assert refs(reg.list(task="cheetah-run")) == ["dataset/mt30:v1", "worldmodel/cheetah:v1"]
    assert refs(reg.list(name="cheetah")) == ["worldmodel/cheetah:v1"]
    assert reg.list(kind="policy") == []
    with pytest.raises(RefError, match="unknown kind"):
        reg.list(kind="policies")


def test_publish_refuses_bad_input(reg: Registry, tmp_path: Path):
    with pytest.raises(RefError, match="lowercase"), reg.stage("dataset", "Walker"):
        pass
    with pytest.raises(ArtifactNotFound, match="dataset/missing"):
        publish(reg, "policy", "walker-walk", parents=["dataset/missing:v1"])
    with pytest.raises(RegistryError, match="registry writes that file itself"):
        publish(reg, "policy", "walker-walk", {"manifest.json": b"{}"})
    with pytest.raises(RegistryError, match="not JSON-serialisable"):
        publish(reg, "policy", "walker-walk", metrics={"loss": object()})
    outside = tmp_path / "outside"
    outside.mkdir()
    with pytest.raises(RegistryError, match="not a staging folder"):
        reg.publish(outside, "policy", "walker-walk")
    assert reg.list() == [] and list((reg.home / "tmp").iterdir()) == []


def test_staging_publishes_once_and_only_inside_the_block(reg: Registry):
    with reg.stage("report", "eval") as staging:
        staging.publish()
        with pytest.raises(RegistryError, match="already published as report/eval:v1"):
            staging.publish()
    with reg.stage("report", "eval") as staging:
        pass
    with pytest.raises(RegistryError, match="publish inside the `with registry.stage"):
        staging.publish()
    assert [a.ref for a in reg.list()] == ["report/eval:v1"]


# ---- crash safety -----------------------------------------------------------------------------


def test_exception_inside_stage_block_leaves_nothing(reg: Registry):
    with pytest.raises(RuntimeError, match="training diverged"):
        with reg.stage("worldmodel", "mt30-48m") as staging:
            (staging.path / "model.safetensors").write_bytes(b"half-written")
            raise RuntimeError("training diverged")
    assert reg.list() == []
    assert list((reg.home / "tmp").iterdir()) == []
    assert not (reg.home / "artifacts" / "worldmodel").exists()


def test_failed_index_insert_moves_the_folder_back(reg: Registry, monkeypatch: pytest.MonkeyPatch):
    def broken_insert(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Registry, "_insert", broken_insert)
    with reg.stage("policy", "walker-walk") as staging:
        (staging.path / "actor.safetensors").write_bytes(b"abc")
        with pytest.raises(sqlite3.OperationalError):
            staging.publish()
        assert sorted(p.name for p in staging.path.iterdir()) == ["actor.safetensors"]
    assert reg.list() == []
    assert list((reg.home / "artifacts" / "policy" / "walker-walk").iterdir()) == []


def test_orphaned_version_folder_is_never_reused(reg: Registry):
    publish(reg, "policy", "walker-walk")
    orphan = reg.home / "artifacts" / "policy" / "walker-walk" / "v2"  # a crash after the rename
    orphan.mkdir()
    (orphan / "actor.safetensors").write_bytes(b"from the crashed run")
    assert publish(reg, "policy", "walker-walk").version == 3
    assert (orphan / "actor.safetensors").read_bytes() == b"from the crashed run"
    assert [a.version for a in reg.list()] == [3, 1]  # the orphan is not listed


def test_removed_version_number_is_never_reissued(reg: Registry):
    publish(reg, "policy", "walker-walk")
    second = publish(reg, "policy", "walker-walk")
    reg.remove(second.ref)
    assert publish(reg, "policy", "walker-walk").version == 3


def test_two_processes_publishing_the_same_name_get_distinct_versions(tmp_path: Path):
    home, go = tmp_path / "home", tmp_path / "go"
    worker = (
        "import sys, time; from pathlib import Path; from registry import Registry\n"
        "home, tag, go = sys.argv[1:]\n"
        "reg = Registry(home)\n"
        "Path(go + '.' + tag).touch()\n"
        "while not Path(go).exists(): time.sleep(0.001)\n"
        "for i in range(10):\n"
        "    with reg.stage('dataset', 'shared') as staging:\n"
        "        (staging.path / 'who.txt').write_text(f'{tag}-{i}')\n"
        "        staging.publish()\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", worker, str(home), tag, str(go)],
            env=_env_with_repo_on_path(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}.{tag}").exists() for tag in "ab") and time.monotonic() < deadline:
        time.sleep(0.001)
    go.touch()  # both start publishing at once on a fresh home: schema creation races too
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    reg = Registry(home)
    artifacts = reg.list(name="shared")
    assert sorted(a.version for a in artifacts) == list(range(1, 21))
    writers = sorted((a.path / "who.txt").read_text() for a in artifacts)
    assert writers == sorted(f"{tag}-{i}" for tag in "ab" for i in range(10))
    assert all(reg.verify(a.ref) == [] for a in artifacts)


# ---- verify, remove, lineage ------------------------------------------------------------------


def test_verify_detects_modified_missing_and_extra_files(reg: Registry):
    artifact = publish(reg, "dataset", "walker-walk", {"a.bin": b"abc", "sub/b.bin": b"abc"})
    assert reg.verify(artifact.ref) == []
    (artifact.path / "a.bin").write_bytes(b"abcd")
    (artifact.path / "sub" / "b.bin").unlink()
    (artifact.path / "sub" / "c.bin").write_bytes(b"")
    problems = reg.verify(artifact.ref)
    assert [(p.path, p.problem) for p in problems] == [
        ("a.bin", "changed"),
        ("sub/b.bin", "missing"),
        ("sub/c.bin", "unexpected"),
    ]
    error = IntegrityError.from_problems(artifact.ref, problems)
    assert "dataset/walker-walk:v1 failed verification (3 problems: changed: a.bin" in str(error)


def test_verify_detects_an_edited_manifest(reg: Registry):
    artifact = publish(reg, "report", "eval", metrics={"iqm": 0.8})
    manifest = json.loads((artifact.path / "manifest.json").read_text())
    manifest["metrics"]["iqm"] = 0.9
    (artifact.path / "manifest.json").write_text(json.dumps(manifest))
    assert reg.verify(artifact.ref) == [FileProblem("manifest.json", "changed", "differs from the index's copy")]


def test_remove_deletes_folder_and_index_rows(reg: Registry):
    artifact = publish(reg, "policy", "walker-walk", tasks=["walker-walk"])
    removed = reg.remove("policy/walker-walk:v1")
    assert removed.ref == artifact.ref
    assert not artifact.path.exists()
    assert reg.list() == [] and reg.list(task="walker-walk") == []
    assert list((reg.home / "tmp").iterdir()) == []
    with pytest.raises(ArtifactNotFound):
        reg.resolve(artifact.ref)


def test_remove_refuses_an_artifact_with_children_unless_forced(reg: Registry):
    data = publish(reg, "dataset", "mt30")
    wm = publish(reg, "worldmodel", "mt30-48m", parents=[data])
    with pytest.raises(RegistryError) as error:
        reg.remove(data.ref)
    assert f"cannot remove {data.ref}: it is a parent of {wm.ref}; remove" in str(error.value)
    assert reg.resolve(data.ref).path.is_dir()
    reg.remove(data.ref, force=True)
    assert not data.path.exists()
    assert reg.lineage(wm.ref).parents[0].exists is False


def test_lineage_is_a_tree_of_parents_marking_missing_ones(reg: Registry):
    data = publish(reg, "dataset", "mt30")
    other = publish(reg, "dataset", "extra")
    wm = publish(reg, "worldmodel", "mt30-48m", parents=[data.ref, "dataset/extra:v1"])
    policy = publish(reg, "policy", "walker-walk", parents=[wm.ref, data.ref])
    reg.remove(other.ref, force=True)

    def shape(node) -> tuple:
        return (node.ref, node.exists, [shape(parent) for parent in node.parents])

    assert shape(reg.lineage("walker-walk", default_kind="policy")) == (
        policy.ref,
        True,
        [
            (wm.ref, True, [(data.ref, True, []), ("dataset/extra:v1", False, [])]),
            (data.ref, True, []),
        ],
    )
    assert [a.ref for a in reg.children(data.ref)] == [policy.ref, wm.ref]
    assert reg.children(policy.ref) == []


# ---- schema, runs, gc, home -------------------------------------------------------------------


def test_newer_schema_version_is_refused_with_a_clear_error(reg: Registry):
    publish(reg, "dataset", "mt30")
    with sqlite3.connect(reg.home / "index.sqlite") as db:
        db.execute(f"PRAGMA user_version = {registry.SCHEMA_VERSION + 1}")
    with pytest.raises(RegistryError, match=r"schema version 2, newer than this pwmctl under"):
        Registry(reg.home).list()


def test_index_uses_wal_and_a_small_explicit_schema(reg: Registry):
    publish(reg, "dataset", "mt30")
    with sqlite3.connect(reg.home / "index.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"artifacts", "parents", "tasks", "remotes", "lines"}


def test_home_folder_can_be_moved(reg: Registry, tmp_path: Path):
    artifact = publish(reg, "dataset", "mt30")
    os.rename(reg.home, tmp_path / "moved")
    moved = Registry(tmp_path / "moved").resolve(artifact.ref)
    assert moved.path == tmp_path / "moved" / "artifacts" / "dataset" / "mt30" / "v1"
    assert Registry(tmp_path / "moved").verify(artifact.ref) == []


def test_run_dirs_are_created_and_found(reg: Registry):
    run = reg.new_run_dir("pretrain")
    assert run.is_dir() and run.parent == reg.home / "runs" and run.name.startswith("pretrain-")
    assert reg.run_dir(run.name) == run
    with pytest.raises(RegistryError, match=rf"no run 'pretrain' .* did you mean {run.name}\?"):
        reg.run_dir("pretrain")
    with pytest.raises(RegistryError, match="no run '../artifacts'"):
        reg.run_dir("../artifacts")


def test_gc_removes_only_stale_staging_folders(reg: Registry):
    with reg.stage("dataset", "mt30") as live:
        stale = reg.home / "tmp" / "stage-dataset-mt30-crashed"  # left by a killed process
        (stale / "data.zarr").mkdir(parents=True)
        (stale / "data.zarr" / "chunk").write_bytes(b"abc")
        hour_ago = time.time() - 3601
        for path in (stale / "data.zarr" / "chunk", stale / "data.zarr", stale):
            os.utime(path, (hour_ago, hour_ago))
        assert reg.gc() == [stale]
        assert not stale.exists() and live.path.is_dir()
        assert reg.list() == []


def _env_with_repo_on_path() -> dict[str, str]:
    """The environment for a child Python that imports this checkout's `registry`."""
    repo = str(Path(registry.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
