"""`pwmctl pretrain` and `pwmctl import-checkpoint` as a user runs them, on tiny data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import run, run_json

from pwm_core.train.loop import read_status

TINY = [
    "--size",
    "1M",
    "--batch-size",
    "8",
    "--horizon",
    "3",
    "--set",
    "val_every=10",
    "--set",
    "log_every=5",
    "--set",
    "val_batches=1",
]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A registry with two tiny real datasets (cartpole-balance, pendulum-swingup)."""
    home = tmp_path_factory.mktemp("pwm")
    run(home, "collect", "cartpole-balance", "-n", "2")
    run(home, "collect", "pendulum-swingup", "-n", "2")
    return home


def test_dry_run_prints_tdmpc2_parameter_counts(tmp_path):
    doc = run_json(tmp_path, "pretrain", "--tasks", "mt80", "--size", "48M", "--dry-run")
    assert round(doc["parameters"]["total"] / 1e6, 1) == 48.8
    assert doc["model"]["task_dim"] == 96 and doc["model"]["latent_dim"] == 768
    doc = run_json(tmp_path, "pretrain", "--tasks", "mt30", "--size", "5M", "--dry-run")
    assert round(doc["parameters"]["total"] / 1e6, 2) == 5.24
    assert doc["sources"]["size"] == "flag" and doc["sources"]["rho"] == "default"
    human = run(tmp_path, "pretrain", "--tasks", "mt80", "--size", "48M", "--dry-run", "--set", "rho=0.5").stdout
    assert "total 48," in human and "[flag]" in human and "[set]" in human
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_pretrain_without_data_names_the_missing_tasks(home):
    result = run(home, "pretrain", "--tasks", "cartpole-balance,walker-walk", *TINY, "--steps", "2", code=2)
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "walker-walk" in line and "pwmctl collect walker-walk" in line


def test_pretrain_publishes_a_world_model_with_lineage(home):
    doc = run_json(home, "pretrain", "--tasks", "cartpole-balance,pendulum-swingup", *TINY, "--steps", "20")
    assert doc["artifact"] == "worldmodel/cartpole-balance_pendulum-swingup-1m:v1" and doc["steps"] == 20
    assert set(doc["val_final"]) >= {"consistency", "reward_ce", "reward_mae"}
    shown = run_json(home, "show", doc["artifact"])
    assert sorted(shown["parents"]) == ["dataset/cartpole-balance:v1", "dataset/pendulum-swingup:v1"]
    files = set(shown["manifest"]["files"])
    assert {"model.safetensors", "config.yaml", "metrics.jsonl"} <= files

    from pwm_core.nn import load_world_model

    model = load_world_model(Path(shown["path"]))
    assert model.cfg.task_names == ["cartpole-balance", "pendulum-swingup"]


def test_corrupted_weights_give_one_clear_error(home, tmp_path):
    from pwm_core.errors import PwmError
    from pwm_core.nn import load_world_model

    doc = run_json(home, "ls", "worldmodel")
    if not doc["artifacts"]:
        pytest.skip("needs the published world model of the test above")
    src = Path(doc["artifacts"][0]["path"])
    broken = tmp_path / "wm"
    broken.mkdir()
    (broken / "config.yaml").write_bytes((src / "config.yaml").read_bytes())
    (broken / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(PwmError) as e:
        load_world_model(broken)
    assert "corrupt" in str(e.value) and "\n" not in str(e.value)


def test_killed_pretrain_resumes_from_its_checkpoint(home):
    env = {**os.environ, "PWM_HOME": str(home)}
    args = [
        sys.executable,
        "-m",
        "pwmctl",
        "pretrain",
        "--tasks",
        "cartpole-balance",
        *TINY,
        "--steps",
        "100000",
        "--set",
        "checkpoint_every=5",
        "--name",
        "killed",
    ]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline, ckpt = time.monotonic() + 180, None
    while time.monotonic() < deadline and ckpt is None:
        found = list(home.glob("runs/pretrain-*/checkpoint.pt"))
        ckpt = next((p for p in found if "killed" in (p.parent / "plan.json").read_text()), None)
        time.sleep(0.5)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt is not None, proc.stderr.read().decode()
    assert run_json(home, "ls", "worldmodel", "--all")["artifacts"] == [] or all(
        a["name"] != "killed" for a in run_json(home, "ls", "worldmodel", "--all")["artifacts"]
    )

    import torch

    saved = torch.load(ckpt, weights_only=True)["step"]
    assert saved >= 5 and saved % 5 == 0
    doc = run_json(home, "pretrain", "--resume", ckpt.parent.name, "--steps", str(saved + 5))
    assert doc["steps"] == saved + 5 and doc["artifact"] == "worldmodel/killed:v1"


def test_import_checkpoint_round_trips_a_tdmpc2_file(tmp_path):
    import torch

    from pwm_core.nn import WorldModel, load_world_model, world_model_config
    from pwm_core.nn.checkpoint import tdmpc2_state_dict
    from pwm_core.tasks import resolve_tasks

    cfg = world_model_config("1M", resolve_tasks("mt30"))
    model = WorldModel(cfg).eval()
    torch.save({"model": tdmpc2_state_dict(model)}, tmp_path / "mt30-1M.pt")
    doc = run_json(tmp_path, "import-checkpoint", str(tmp_path / "mt30-1M.pt"), "--tasks", "mt30", "--size", "1M")
    assert doc["artifact"] == "worldmodel/mt30-1m:v1"
    loaded = load_world_model(tmp_path / "artifacts" / "worldmodel" / "mt30-1m" / "v1").eval()
    obs, task = torch.randn(4, 24), torch.tensor([0, 1, 8, 29])
    assert torch.equal(model.encode(obs, task), loaded.encode(obs, task))

    result = run(tmp_path, "import-checkpoint", str(tmp_path / "mt30-1M.pt"), "--tasks", "mt30", "--size", "5M", code=2)
    assert len(result.stderr.strip().splitlines()) == 1 and "mis-shaped" in result.stderr


def test_torchrun_two_cpu_ranks_publish_one_world_model(home):
    """`torchrun --nproc-per-node 2 -m pwmctl pretrain ...`: gloo on CPU, rank 0 publishes once."""
    env = {**os.environ, "PWM_HOME": str(home), "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    out = subprocess.run(
        [
            str(torchrun),
            "--nproc-per-node",
            "2",
            "-m",
            "pwmctl",
            "--format",
            "json",
            "pretrain",
            "--tasks",
            "cartpole-balance",
            *TINY,
            "--steps",
            "4",
            "--name",
            "ddp",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)  # one JSON document: rank 1 prints nothing
    assert doc["artifact"] == "worldmodel/ddp:v1" and doc["steps"] == 4
    assert [a["ref"] for a in run_json(home, "ls", "worldmodel", "--all")["artifacts"] if a["name"] == "ddp"] == [
        "worldmodel/ddp:v1"
    ]


def test_a_live_run_can_be_watched_and_sighup_checkpoints_it(home, tmp_path):
    """A closed terminal (SIGHUP) stops like Ctrl-C: the step finishes, a checkpoint is saved, exit 130.
    Meanwhile another terminal sees the run: `runs ls`, `runs show`, `plot RUN`, TensorBoard files."""
    env = {**os.environ, "PWM_HOME": str(home)}
    args = [
        sys.executable,
        "-m",
        "pwmctl",
        "pretrain",
        "--tasks",
        "cartpole-balance",
        *TINY,
        "--steps",
        "100000",
        "--set",
        "log_every=1",
        "--set",
        "checkpoint_every=100000",
        "--name",
        "hup",
        "--logger",
        "tensorboard",
    ]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline, run_dir = time.monotonic() + 180, None
    while time.monotonic() < deadline:
        runs = [p for p in home.glob("runs/pretrain-*") if '"hup"' in (p / "plan.json").read_text()]
        status = read_status(runs[0]) if runs else None
        if status and status["step"] >= 3:
            run_dir = runs[0]
            break
        time.sleep(0.3)
    assert run_dir is not None, proc.stderr.read().decode() if proc.poll() is not None else "no progress"
    try:
        listed = {r["run"]: r for r in run_json(home, "runs", "ls")["runs"]}
        assert listed[run_dir.name]["state"] == "running" and listed[run_dir.name]["command"] == "pretrain"
        shown = run_json(home, "runs", "show", run_dir.name)
        assert shown["rows"] and "consistency" in shown["rows"][-1]
        plotted = run_json(home, "plot", run_dir.name, "--out", str(tmp_path))
        assert Path(plotted["files"][0]).stat().st_size > 0
        assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    finally:
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    import torch

    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"]
    status = run_json(home, "runs", "show", run_dir.name)
    assert status["state"] == "interrupted" and status["step"] == saved  # nothing after the checkpoint is lost
    doc = run_json(home, "pretrain", "--resume", run_dir.name, "--steps", str(saved + 2))
    assert doc["steps"] == saved + 2 and run_json(home, "runs", "show", run_dir.name)["state"] == "published"
    again = run(home, "pretrain", "--resume", run_dir.name, code=2)  # a finished run is not published twice
    assert "already finished and published worldmodel/hup:v1" in again.stderr
    assert run(home, "runs", "rm", run_dir.name, "--yes").exit_code == 0 and not run_dir.exists()


@pytest.mark.parametrize(
    "override",
    [
        "steps=-5",
        "batch_size=0",
        "horizon=0",
        "checkpoint_every=0",
        "val_every=0",
        "log_every=0",
        "rho=nan",
        "device=banana",
    ],
)
def test_invalid_pretrain_settings_are_refused_before_any_work(home, override):
    result = run(home, "pretrain", "--tasks", "cartpole-balance", "--set", override, "--name", "bad", code=2)
    assert len(result.stderr.strip().splitlines()) == 1 and override.split("=")[0] in result.stderr, result.stderr
    assert not [p for p in home.glob("runs/pretrain-*") if '"bad"' in (p / "plan.json").read_text()]


def test_a_bad_name_is_refused_before_any_work(home):
    before = set(home.glob("runs/*"))
    result = run(home, "pretrain", "--tasks", "cartpole-balance", *TINY, "--steps", "2", "--name", "../x", code=2)
    assert len(result.stderr.strip().splitlines()) == 1 and "world-model name" in result.stderr
    assert set(home.glob("runs/*")) == before


@pytest.mark.slow
def test_torchrun_on_two_nodes_trains_resumes_and_publishes_once(home):
    """`torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d` twice on loopback, as two machines sharing
    PWM_HOME: --global-batch-size splits over the ranks, a stopped run resumes on both, rank 0 publishes."""
    import socket

    env = {**os.environ, "PWM_HOME": str(home), "OMP_NUM_THREADS": "1"}
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    tiny = [a for a in TINY if a not in ("--batch-size", "8")]

    def two_nodes(rdzv_id: str, *args: str) -> list[subprocess.Popen]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [
            torchrun,
            "--nnodes",
            "2",
            "--nproc-per-node",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
            "--rdzv-id",
            rdzv_id,
            "-m",
            "pwmctl",
            "--format",
            "json",
            "pretrain",
            *args,
        ]
        return [
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
            )
            for _ in range(2)
        ]

    procs = two_nodes(
        "first",
        "--tasks",
        "cartpole-balance",
        *tiny,
        "--global-batch-size",
        "16",
        "--steps",
        "100000",
        "--set",
        "checkpoint_every=2",
        "--name",
        "nodes",
    )
    deadline, ckpt = time.monotonic() + 240, None
    while time.monotonic() < deadline and ckpt is None:
        found = list(home.glob("runs/pretrain-*/checkpoint.pt"))
        ckpt = next((p for p in found if '"nodes"' in (p.parent / "plan.json").read_text()), None)
        time.sleep(0.5)
    for p in procs:  # stop both machines: torchrun passes SIGTERM to its worker, which checkpoints and exits
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(timeout=120)
    assert ckpt is not None, procs[0].stderr.read()
    assert json.loads((ckpt.parent / "plan.json").read_text())["pretrain"]["batch_size"] == 8  # 16 over 2 ranks

    import torch

    saved = torch.load(ckpt, weights_only=True)["step"]
    outs = [
        p.communicate(timeout=300) for p in two_nodes("again", "--resume", ckpt.parent.name, "--steps", str(saved + 2))
    ]
    docs = [json.loads(out) for out, _ in outs if out.strip()]  # rank 0 prints the one document
    assert len(docs) == 1, [err for _, err in outs]
    assert docs[0]["steps"] == saved + 2 and docs[0]["artifact"] == "worldmodel/nodes:v1"
