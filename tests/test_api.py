"""pwmctl.api as a researcher uses it: docs/python-api.md's examples, run as written, on a tiny registry
made with the CLI (dataset -> 1M world model -> policy, under the quickstart's names), and Hub repo ids
pulled from the loopback fake Hub."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import run, run_json

from pwm_core.errors import PwmError
from pwm_core.nn.world_model import WorldModel
from pwm_core.policy import Policy
from pwmctl import api
from registry import ArtifactNotFound, IntegrityError, Registry
from registry.hub import HubError

pytest_plugins = ["fakehub"]  # the fake_hub fixture
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")  # inside huggingface_hub

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"
TASK = "cartpole-swingup"
NAME = f"quickstart-{TASK}"  # what `make demo` publishes, so the doc's refs work here too


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("pwm")
    run(home, "collect", TASK, "-n", "2", "--name", NAME)
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
        NAME,
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
        NAME,
    )
    return home


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.DOTALL | re.MULTILINE)


def push(home: Path, ref: str, repo: str, hub_url: str) -> None:
    run(home, "push", ref, "--repo", repo, "--hub-endpoint", hub_url)


def test_docs_examples_run_as_written(home, fake_hub, monkeypatch, capsys):
    push(home, f"policy/{NAME}", "me/pwm-cartpole-swingup", fake_hub.url)  # the repo the doc pulls
    monkeypatch.setenv("PWM_HOME", str(home))  # the doc uses the default home
    monkeypatch.setenv("PWMCTL_HUB_ENDPOINT", fake_hub.url)
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 6
    scope: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), scope)
    printed = capsys.readouterr().out
    assert f"{TASK} 5 1" in printed and "Policy WorldModel" in printed
    assert scope["total"] == scope["returns"][0] and len(scope["returns"]) == 2
    assert scope["obs"].shape == (2 * 501, 5) and scope["r"].shape == (2, 1)


def test_rollout_returns_are_pwmctl_evals(home):
    doc = run_json(home, "eval", f"policy/{NAME}", "--seeds", "2", "--reps", "100")
    report = Registry(home).resolve(doc["report"])
    episodes = json.loads((report.path / "results.json").read_text())["episodes"][f"policy/{NAME}:v1"]
    policy = api.load_policy(NAME, home)  # a bare name means a policy
    for seed in (0, 1):
        assert api.rollout(policy, seed=seed) == pytest.approx([episodes[seed]["ret"]], rel=1e-6)


def test_loaders_check_the_kind_and_the_files(home, tmp_path):
    assert isinstance(api.from_pretrained(f"policy/{NAME}:v1", home), Policy)
    assert isinstance(api.from_pretrained(f"worldmodel/{NAME}", home), WorldModel)
    with pytest.raises(PwmError, match=r"a worldmodel, not a policy: use load_world_model\(\)"):
        api.load_policy(f"worldmodel/{NAME}", home)
    with pytest.raises(PwmError, match=r"use open_dataset\(\)"):
        api.from_pretrained(f"dataset/{NAME}", home)
    with pytest.raises(ArtifactNotFound, match=NAME):  # suggests the close name
        api.load_policy("quickstart-cartpole-swingupp", home)
    with pytest.raises(PwmError, match="name the task"):
        api.rollout(object())  # type: ignore[arg-type]

    copy = tmp_path / "copy"
    shutil.copytree(home, copy)
    artifact = Registry(copy).resolve(f"policy/{NAME}")
    (artifact.path / "policy.yaml").write_text((artifact.path / "policy.yaml").read_text() + "\n# edited\n")
    with pytest.raises(IntegrityError, match=f"policy/{NAME}:v1 failed verification .*policy.yaml"):
        api.load_policy(NAME, copy)
    assert isinstance(api.load_policy(NAME, copy, verify=False), Policy)  # the edit is a comment


def test_open_dataset_gives_the_collected_episodes(home):
    ds = api.open_dataset(NAME, home, verify=True)
    arrays = ds.load()
    assert ds.num_episodes == 2 and arrays["obs"].shape == (1002, 5) and arrays["obs"].dtype == np.float32
    np.testing.assert_array_equal(arrays["episode_ends"], [501, 1002])


def test_hub_repo_ids_are_pulled_verified_and_loaded(home, fake_hub, tmp_path, monkeypatch):
    push(home, f"policy/{NAME}", "me/cartpole-policy", fake_hub.url)
    push(home, f"worldmodel/{NAME}", "me/cartpole-wm", fake_hub.url)
    monkeypatch.setenv("PWMCTL_HUB_ENDPOINT", fake_hub.url)
    fresh = tmp_path / "fresh"

    policy = api.load_policy("me/cartpole-policy@v1", fresh)
    local = api.load_policy(NAME, home)
    obs = np.linspace(-1, 1, 5, dtype=np.float32)
    np.testing.assert_array_equal(policy.act(obs), local.act(obs))
    assert (
        Registry(fresh).resolve(f"policy/{NAME}").manifest["files"]
        == Registry(home).resolve(f"policy/{NAME}").manifest["files"]
    )
    served = len(fake_hub.requests)
    api.load_policy("me/cartpole-policy@v1", fresh)  # that version is here now: no download
    assert len(fake_hub.requests) == served

    assert isinstance(api.from_pretrained("me/cartpole-wm", fresh), WorldModel)
    with pytest.raises(PwmError, match="a worldmodel, not a policy"):
        api.load_policy("me/cartpole-wm", fresh)
    with pytest.raises(HubError) as error:
        api.load_policy("me/no-such-repo", fresh)
    assert "\n" not in str(error.value)
