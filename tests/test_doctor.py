"""`pwmctl doctor`'s checks: torch build, headless rendering, video files, Hub endpoint and login, registry
disk. A check is ok or warn; no network is a warning, never a failure."""

from __future__ import annotations

import json
from collections import namedtuple

import pytest
from helpers import run, run_json

from pwmctl.commands import system
from registry.hub import hub_status

pytest_plugins = ["fakehub"]  # the fake_hub fixture


@pytest.fixture(autouse=True)
def quick_render(monkeypatch):
    """Rendering is probed in subprocesses (seconds each): stubbed here, run for real in test_cli."""
    monkeypatch.setattr(
        system,
        "_render_works",
        lambda backend: (backend == "osmesa", "" if backend == "osmesa" else "MUJOCO_GL=egl failed: no EGL device"),
    )


def checks(doc: dict) -> dict[str, tuple[str, str]]:
    return {c["check"]: (c["status"], c["detail"]) for c in doc["checks"]}


def with_whoami(hub, name: str) -> None:
    """Let the fake Hub answer whoami-v2 as the real one does: the token's user, 401 for a wrong token."""
    handle = hub.handle

    def handle_with_whoami(method, raw_path, headers, body):
        if raw_path.startswith("/api/whoami-v2"):
            if headers.get("Authorization") != "Bearer hf_fake_token":
                return 401, {"Content-Type": "application/json"}, b'{"error": "Invalid credentials"}'
            return 200, {"Content-Type": "application/json"}, json.dumps({"name": name, "type": "user"}).encode()
        return handle(method, raw_path, headers, body)

    hub.handle = handle_with_whoami  # type: ignore[method-assign]


def test_reachable_hub_and_a_valid_token_are_ok(tmp_path, fake_hub):
    with_whoami(fake_hub, "me")
    doc = run_json(tmp_path, "doctor", "--hub-endpoint", fake_hub.url)
    rows = checks(doc)
    assert rows["Hub endpoint"] == ("ok", f"{fake_hub.url}: reachable")
    assert rows["Hub login"] == ("ok", "logged in as me (token from HF_TOKEN)")
    assert doc["hub"] == {
        "endpoint": fake_hub.url,
        "reachable": True,
        "logged_in": True,
        "token_source": "HF_TOKEN",
        "user": "me",
        "detail": "answered",
    }


def test_a_refused_token_and_no_login_are_warnings(tmp_path, fake_hub, monkeypatch):
    with_whoami(fake_hub, "me")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    assert checks(run_json(tmp_path, "doctor", "--hub-endpoint", fake_hub.url))["Hub login"] == (
        "warn",
        "token from HF_TOKEN, but the token was refused (HTTP 401)",
    )
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no token file there either
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    status, detail = checks(run_json(tmp_path, "doctor", "--hub-endpoint", fake_hub.url))["Hub login"]
    assert status == "warn" and detail.startswith("not logged in: `hf auth login` or HF_TOKEN")


def test_no_network_is_a_warning_row_not_a_failure(tmp_path, fake_hub, monkeypatch):
    down = fake_hub.dead_endpoint()
    result = run(tmp_path, "--format", "json", "doctor", "--hub-endpoint", down)  # exit code 0
    rows = checks(json.loads(result.stdout))
    assert rows["Hub endpoint"][0] == "warn" and f"{down}: not reachable within 3 s" in rows["Hub endpoint"][1]
    assert rows["Hub login"] == ("warn", "token from HF_TOKEN, not checked (Hub not contacted)")
    human = run(tmp_path, "doctor", "--hub-endpoint", down).stdout
    assert "Hub endpoint" in human and "warn" in human and "not reachable" in human
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(fake_hub.requests)
    rows = checks(run_json(tmp_path, "doctor", "--hub-endpoint", fake_hub.url))
    assert rows["Hub endpoint"] == ("warn", f"{fake_hub.url}: HF_HUB_OFFLINE is set: not contacted")
    assert len(fake_hub.requests) == before


def test_hub_status_gives_up_within_its_timeout():
    import socket
    import time

    with socket.socket() as server:  # accepts the connection, never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        t0 = time.monotonic()
        status = hub_status(f"http://127.0.0.1:{server.getsockname()[1]}", timeout_s=0.5)
    assert status.reachable is False and "within 0.5 s" in status.detail and time.monotonic() - t0 < 5


def test_render_video_torch_and_disk_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = checks(run_json(tmp_path, "doctor"))
    assert rows["headless render"] == ("ok", "MUJOCO_GL=egl: failed: no EGL device, MUJOCO_GL=osmesa: ok")
    import torch

    status, detail = rows["torch build"]
    assert detail.startswith(f"torch {torch.__version__}, ")
    assert ("CPU-only build" in detail) == (torch.version.cuda is None)
    assert rows["registry disk"][0] == "ok" and str(tmp_path) in rows["registry disk"][1]
    assert rows["video files"][0] == ("ok" if system._video_check()["ok"] else "warn")

    monkeypatch.setattr(system, "_render_works", lambda backend: (False, f"MUJOCO_GL={backend} failed: nope"))
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(system.shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - 10**8, 10**8))
    monkeypatch.setattr(
        "pwm_core.render.importlib.util.find_spec", lambda name: None if name == "imageio_ffmpeg" else object()
    )
    rows = checks(run_json(tmp_path, "doctor"))
    assert rows["headless render"][0] == "warn" and "`pwmctl eval --video` needs one" in rows["headless render"][1]
    assert rows["registry disk"] == (
        "warn",
        f"100.0 MB free at {tmp_path} (under 2.1 GB: datasets and checkpoints may not fit)",
    )
    assert rows["video files"] == ("warn", "videos need imageio_ffmpeg: pip install 'pwmctl[video]'")
