"""TD-MPC2's released data and checkpoints fetched from the Hub (the loopback fake, small files in the real
layout): `data import-tdmpc2 --from-hub`, `import-checkpoint hf://...`, resumable checked downloads."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import typer

from helpers import run, run_json
from test_tdmpc2_import import assert_imported_exactly, write_synthetic_tdmpc2_chunk

from pwm_core.data.episodes import OBS
from pwm_core.data.shards import is_raw
from pwm_core.data import open_dataset
from registry.hub import HubError
from registry.hub_files import HubFile, download, find_file, parse_file_ref

pytest_plugins = ["fakehub"]  # the fake_hub fixture

REPO = "nicklashansen/tdmpc2"
MT30_TASKS = [[0, 7], [29, 12], [3, 3], [18, 1]]  # two episodes per chunk, as chunk_0 ... chunk_3


@pytest.fixture
def mt30_on_hub(fake_hub, tmp_path):
    """The dataset repo with mt30/chunk_0.pt ... chunk_3.pt (2 episodes of 501 rows each); the chunks' TensorDicts."""
    chunks, files = [], {}
    for i, task_ids in enumerate(MT30_TASKS):
        path = tmp_path / f"chunk_{i}.pt"
        chunks.append(write_synthetic_tdmpc2_chunk(path, 2, 501, task_ids, seed=i))
        files[f"mt30/chunk_{i}.pt"] = path.read_bytes()
    fake_hub.add_repo(REPO, files, repo_type="dataset")
    return chunks


def import_from_hub(home: Path, fake_hub, *args: str, code: int | None = 0):
    return run(home, "data", "import-tdmpc2", "--from-hub", "mt30", "--hub-endpoint", fake_hub.url, *args, code=code)


def downloads_of(fake_hub, i: int) -> int:
    return sum(1 for method, path in fake_hub.requests if method == "GET" and path.endswith(f"mt30/chunk_{i}.pt"))


def only_run(home: Path) -> Path:
    (run_dir,) = (home / "runs").iterdir()
    return run_dir


def test_from_hub_converts_every_chunk_and_keeps_none(fake_hub, mt30_on_hub, tmp_path):
    home = tmp_path / "home"
    result = import_from_hub(home, fake_hub)
    assert "published dataset/mt30:v1: 8 episodes, 4000 transitions from 4 chunk(s)" in result.stdout
    ds = open_dataset(home / "artifacts" / "dataset" / "mt30" / "v1" / "data.zarr")
    assert_imported_exactly(ds, mt30_on_hub)
    assert ds.provenance["hub"]["repo"] == REPO and ds.provenance["files"] == [f"chunk_{i}.pt" for i in range(4)]
    assert list((home / "runs").iterdir()) == [] and not list(home.rglob("*.pt*"))  # no chunk left on disk
    assert [downloads_of(fake_hub, i) for i in range(4)] == [1, 1, 1, 1]
    # Off a terminal, each download is one quiet line with its byte count.
    lines = [line for line in result.stderr.splitlines() if "download mt30/chunk_0.pt" in line]
    assert len(lines) == 1 and "KB / " in lines[0], result.stderr


def test_from_hub_in_the_streaming_layout(fake_hub, mt30_on_hub, tmp_path):
    home = tmp_path / "home"
    import_from_hub(home, fake_hub, "--compression", "none", "--chunk-rows", "256")
    ds = open_dataset(home / "artifacts" / "dataset" / "mt30" / "v1" / "data.zarr")
    assert_imported_exactly(ds, mt30_on_hub)
    assert is_raw(ds._layout.arrays[OBS]) and ds._layout.arrays[OBS].chunks[0] == 256


def test_a_failed_download_keeps_the_converted_chunks_and_the_rerun_resumes(fake_hub, mt30_on_hub, tmp_path):
    home = tmp_path / "home"
    fake_hub.fail_next["mt30/chunk_2.pt"] = 503
    result = import_from_hub(home, fake_hub, code=2)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0]
    assert "HTTP 503" in errors[0] and "2 of 4 chunks are converted and kept in run" in errors[0]
    assert not (home / "artifacts" / "dataset").exists() or not list((home / "artifacts" / "dataset").iterdir())
    run_dir = only_run(home)
    assert_imported_exactly(open_dataset(run_dir / "data.zarr"), mt30_on_hub[:2])  # usable as it stands
    assert sorted(p.name for p in run_dir.glob("*.pt*")) == []
    # A killed process leaves part of chunk_2 behind: the re-run asks for the rest only.
    data = fake_hub.files(REPO, repo_type="dataset")["mt30/chunk_2.pt"]
    (run_dir / "chunk_2.pt.part").write_bytes(data[:1000])

    result = import_from_hub(home, fake_hub)
    assert "resuming run" in result.stderr and "2 of 4 chunks converted" in result.stderr
    assert [downloads_of(fake_hub, i) for i in range(4)] == [1, 1, 2, 1]  # 0 and 1 were not fetched again
    assert (
        "/datasets/nicklashansen/tdmpc2/resolve/" in "".join(p for _, p in fake_hub.requests)
        and ("mt30/chunk_2.pt", "bytes=1000-") in fake_hub.ranges
    )
    assert_imported_exactly(open_dataset(home / "artifacts" / "dataset" / "mt30" / "v1" / "data.zarr"), mt30_on_hub)
    assert list((home / "runs").iterdir()) == []


def test_a_kill_inside_a_chunk_resumes_after_its_committed_episodes(fake_hub, mt30_on_hub, tmp_path, monkeypatch):
    import pwm_core.data.tdmpc2 as tdmpc2
    from pwm_core.data.writer import EpisodeWriter

    home = tmp_path / "home"
    monkeypatch.setattr(tdmpc2, "IMPORT_BATCH_ROWS", 501)  # one episode per committed batch
    append, calls = EpisodeWriter.append_episodes, []

    def killed_on_the_fourth(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # chunk_1's second episode: its first is committed
            raise KeyboardInterrupt
        return append(self, *args, **kwargs)

    monkeypatch.setattr(EpisodeWriter, "append_episodes", killed_on_the_fourth)
    result = import_from_hub(home, fake_hub, code=130)
    assert "1 of 4 chunks converted and kept in run" in result.stderr and "nothing was published" in result.stderr
    run_dir = only_run(home)
    assert open_dataset(run_dir / "data.zarr").num_episodes == 3
    assert (run_dir / "chunk_1.pt").is_file()  # kept for the re-run, which does not download it again

    monkeypatch.setattr(EpisodeWriter, "append_episodes", append)
    doc = json.loads(import_from_hub(home, fake_hub, "--format", "json").stdout)
    assert doc["artifact"] == "dataset/mt30:v1" and doc["episodes"] == 8
    assert_imported_exactly(open_dataset(home / "artifacts" / "dataset" / "mt30" / "v1" / "data.zarr"), mt30_on_hub)
    assert [downloads_of(fake_hub, i) for i in range(4)] == [1, 1, 1, 1]


def test_bad_sets_and_a_missing_chunk_are_one_error_line(fake_hub, tmp_path):
    home = tmp_path / "home"
    for args, message in [
        (["--from-hub", "mt40"], "--from-hub takes mt30 or mt80"),
        (["--from-hub", "mt30"], "no dataset repo nicklashansen/tdmpc2"),
        (["--from-hub", "mt30", "some.pt"], "pass no chunk files"),
        ([], "name the chunk files or their folder, or download them with --from-hub"),
    ]:
        result = run(home, "data", "import-tdmpc2", *args, "--hub-endpoint", fake_hub.url, code=2)
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    fake_hub.add_repo(REPO, {"mt30/chunk_0.pt": b"x", "mt30/chunk_1.pt": b"y"}, repo_type="dataset")
    result = import_from_hub(home, fake_hub, code=2)
    assert result.stderr.count("\n") == 1 and "lacks mt30/chunk_2.pt, chunk_3.pt" in result.stderr
    assert not (home / "runs").exists() or list((home / "runs").iterdir()) == []


# ---- checkpoints -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mt30_1m_checkpoint():
    """A TD-MPC2-layout mt30 1M checkpoint's bytes, and the model it holds."""
    from pwm_core.nn import WorldModel, world_model_config
    from pwm_core.nn.checkpoint import tdmpc2_state_dict
    from pwm_core.tasks import resolve_tasks

    model = WorldModel(world_model_config("1M", resolve_tasks("mt30"))).eval()
    buffer = io.BytesIO()
    torch.save({"model": tdmpc2_state_dict(model)}, buffer)
    return buffer.getvalue(), model


def test_import_checkpoint_from_a_hub_ref_infers_set_and_size(fake_hub, mt30_1m_checkpoint, tmp_path):
    from pwm_core.nn import load_world_model

    data, model = mt30_1m_checkpoint
    fake_hub.add_repo(REPO, {"multitask/mt30-1M.pt": data, "multitask/mt80-1M.pt": b"other"})
    home = tmp_path / "home"
    doc = run_json(
        home, "import-checkpoint", "hf://nicklashansen/tdmpc2/multitask/mt30-1M.pt", "--hub-endpoint", fake_hub.url
    )
    assert doc["artifact"] == "worldmodel/mt30-1m:v1"
    sha = fake_hub.repo(REPO).branches["main"]
    assert doc["source"] == f"hf://nicklashansen/tdmpc2@{sha}/multitask/mt30-1M.pt"  # pinned to the commit
    loaded = load_world_model(home / "artifacts" / "worldmodel" / "mt30-1m" / "v1").eval()
    obs, task = torch.randn(4, 24), torch.tensor([0, 1, 8, 29])
    assert torch.equal(model.encode(obs, task), loaded.encode(obs, task))
    assert list((home / "downloads").iterdir()) == []  # the download goes once imported
    # The short form ORG/NAME/PATH is a model repo's file too.
    doc = run_json(
        home,
        "import-checkpoint",
        "nicklashansen/tdmpc2/multitask/mt30-1M.pt",
        "--name",
        "again",
        "--hub-endpoint",
        fake_hub.url,
    )
    assert doc["artifact"] == "worldmodel/again:v1"


def test_bad_checkpoint_refs_are_one_error_line(fake_hub, mt30_1m_checkpoint, tmp_path):
    fake_hub.add_repo(REPO, {"multitask/mt30-1M.pt": mt30_1m_checkpoint[0]})
    home = tmp_path / "home"
    for ref, message in [
        (
            "hf://nicklashansen/tdmpc2/multitask/mt30-19M.pt",
            "no file multitask/mt30-19M.pt in model repo nicklashansen/tdmpc2 at main",
        ),
        ("hf://nicklashansen/tdmpc2/multitask/mt30-2M.pt", "pass --size"),
        ("hf://nicklashansen/tdmpc2/mt30-1M.pt", "did you mean multitask/mt30-1M.pt?"),
        ("hf://nobody/nothing/mt30-1M.pt", "no model repo nobody/nothing"),
        ("hf://nicklashansen/tdmpc2@v9/multitask/mt30-1M.pt", "v9"),
        ("hf://nicklashansen/mt30-1M.pt", "expected hf://ORG/NAME/PATH or hf://ORG/NAME@REV/PATH"),
        ("hf://datasets/nicklashansen/tdmpc2/multitask/mt30-1M.pt", "no dataset repo nicklashansen/tdmpc2"),
        ("missing/mt30-1M.pt", "no such checkpoint file: missing/mt30-1M.pt"),
        ("some/where/mt30-1M.pt", "no such checkpoint file some/where/mt30-1M.pt, nor on the Hub"),
    ]:
        result = run(home, "import-checkpoint", ref, "--hub-endpoint", fake_hub.url, code=2)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:"), (ref, result.stderr)
        assert message in result.stderr, (ref, result.stderr)
    dead = run(
        home,
        "import-checkpoint",
        "hf://nicklashansen/tdmpc2/multitask/mt30-1M.pt",
        "--hub-endpoint",
        fake_hub.dead_endpoint(),
        code=2,
    )
    assert dead.stderr.count("\n") == 1 and "cannot reach the Hub" in dead.stderr
    assert not (home / "artifacts" / "worldmodel").exists() or not list((home / "artifacts" / "worldmodel").iterdir())


def test_released_names_give_set_and_size():
    from pwmctl.commands.importing import _infer

    for name, expected in [
        ("mt30-48M.pt", ("mt30", "48M")),
        ("mt80-317M.pt", ("mt80", "317M")),
        ("mt30_48M_4900000.pt", ("mt30", "48M")),
        ("mt80_48M_2700000.pt", ("mt80", "48M")),
        ("MT30-1m.pt", ("mt30", "1M")),
    ]:
        assert (_infer(name, "tasks"), _infer(name, "size")) == expected, name
    for name, what in [("mt30-2M.pt", "size"), ("mt300-1M.pt", "tasks"), ("mt30-1.5M.pt", "size")]:
        with pytest.raises(typer.Exit):
            _infer(name, what)


# ---- the download itself -----------------------------------------------------------------------


def test_a_dropped_connection_resumes_in_the_same_call(fake_hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1000)  # the client keeps whole chunks of a cut stream
    data = bytes(range(256)) * 40
    fake_hub.add_repo("me/files", {"blob.bin": data})
    file = find_file(parse_file_ref("hf://me/files/blob.bin"), fake_hub.url)
    fake_hub.cut_next["blob.bin"] = 3000
    seen = []
    assert (
        download(file, tmp_path / "blob.bin", progress=lambda done, total: seen.append((done, total))).read_bytes()
        == data
    )
    assert ("blob.bin", "bytes=3000-") in fake_hub.ranges and seen[-1] == (len(data), len(data))
    assert not (tmp_path / "blob.bin.part").exists()


def test_bytes_that_do_not_match_the_hubs_digest_never_become_the_file(fake_hub, tmp_path):
    fake_hub.add_repo("me/files", {"blob.bin": b"a" * 5000, "small.txt": b"hello"})
    for path in ("blob.bin", "small.txt"):
        file = find_file(parse_file_ref(f"hf://me/files/{path}"), fake_hub.url)
        good = download(file, tmp_path / path)
        lie = HubFile(file.ref, file.size, "0" * 64 if file.sha256 else None, "0" * 40, file.endpoint)
        with pytest.raises(HubError, match="does not match the Hub's"):
            download(lie, tmp_path / path)  # the file already there is checked again, and removed
        assert not good.exists() and not (tmp_path / f"{path}.part").exists()


def test_file_refs_parse_and_malformed_ones_are_refused():
    ref = parse_file_ref("hf://datasets/nicklashansen/tdmpc2@abc/mt30/chunk_0.pt")
    assert (ref.repo, ref.repo_type, ref.revision, ref.path) == (REPO, "dataset", "abc", "mt30/chunk_0.pt")
    assert str(ref) == "hf://datasets/nicklashansen/tdmpc2@abc/mt30/chunk_0.pt"
    ref = parse_file_ref("imgeorgiev/pwm/multitask/mt30_48M_4900000.pt")
    assert (ref.repo, ref.repo_type, ref.revision, ref.path) == (
        "imgeorgiev/pwm",
        "model",
        None,
        "multitask/mt30_48M_4900000.pt",
    )
    for bad in ("hf://a/b", "hf://a/b@/c.pt", "hf://a//c.pt", "hf://-a/b/c.pt"):
        with pytest.raises(HubError, match="bad Hub"):
            parse_file_ref(bad)


def test_byte_progress_shows_sizes_speed_and_eta(tmp_path, monkeypatch):
    from rich.console import Console

    import pwmctl.console as console

    st = console.State(home=tmp_path)
    for terminal in (True, False):
        out = io.StringIO()
        monkeypatch.setattr(console, "stderr", Console(file=out, force_terminal=terminal, width=150))
        with console.ByteProgress(st, "download mt30/chunk_0.pt") as bar:
            bar(200_000, 2_000_000)  # resumed: 200 KB were there before
            bar(1_000_000, 2_000_000)
            if not terminal:
                assert out.getvalue() == ""  # off a terminal, nothing before a minute has passed ...
                bar.bar.every_s = 0
                bar(1_500_000, 2_000_000)
            bar(2_000_000, 2_000_000)
        text = out.getvalue()
        if terminal:
            assert "2.0/2.0 MB" in text and "download mt30/chunk_0.pt" in text
        else:
            lines = text.splitlines()  # ... then one line per update, with speed and ETA until done
            assert len(lines) == 2 and "1.5 MB / 2.0 MB" in lines[0] and "/s, ETA " in lines[0]
            assert "2.0 MB / 2.0 MB" in lines[1] and "ETA" not in lines[1]


def test_a_download_the_disk_cannot_hold_is_refused_before_any_byte(fake_hub, tmp_path, monkeypatch):
    import collections

    import registry.hub_files as hub_files
    from registry.errors import DiskError

    fake_hub.add_repo("me/files", {"blob.bin": b"a" * 5000})
    file = find_file(parse_file_ref("hf://me/files/blob.bin"), fake_hub.url)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(hub_files.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 4999, 4999))
    with pytest.raises(DiskError, match="blob.bin needs 5000 more bytes but .* has 4999 free"):
        download(file, tmp_path / "blob.bin")
    assert list(tmp_path.iterdir()) == [] and not any(m == "GET" and "resolve" in p for m, p in fake_hub.requests)
