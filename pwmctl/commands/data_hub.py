"""`pwmctl data import-tdmpc2 --from-hub mt30|mt80`: TD-MPC2's published chunks, fetched and converted one at a time.

The work lives in a run folder ($PWM_HOME/runs/import-tdmpc2-...): plan.json (endpoint, repo, the pinned
commit, every chunk with its size and digest), converted.json (the chunks already in the dataset and the
episode count after each), data.zarr, and at most one chunk being downloaded (`.pt.part`) or converted
(`.pt`, deleted once converted). Disk holds one chunk plus the Zarr. The same command run again finds
the unfinished run and resumes it: converted chunks are skipped, a part file is resumed by a Range
request, and a chunk whose conversion was cut short resumes after the episodes it committed. The dataset
is published (hard links, as `collect` does) only once every chunk is in; nothing is half-published.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import typer

from pwmctl.commands.collect import DATASET_DIR
from pwmctl.console import ByteProgress, Progress, State, emit, fail, human_size, info
from pwmctl.console import interrupts_as_keyboard_interrupt
from pwmctl.runs import PLAN, published_by, read_plan, write_plan

RUN_PREFIX = "import-tdmpc2"
COMMAND = "data import-tdmpc2"
CONVERTED = "converted.json"  # [{"path", "episodes_end"}], in chunk order


def import_from_hub(st: State, set_name: str, name: str | None, endpoint: str, layout: dict | None = None) -> None:
    """Fetch, convert and publish the chunks of ``set_name`` (mt30 | mt80) from ``endpoint``, resuming an
    unfinished run of the same import. ``layout``: the dataset's ``chunk_rows`` / ``compression`` (a resumed
    run keeps the layout it started with)."""
    from pwm_core.data.tdmpc2 import HUB_CHUNKS, HUB_REPO
    from registry.errors import DiskError
    from registry.hub import HubError
    from registry.refs import check_name

    if set_name not in HUB_CHUNKS:
        raise fail(f"--from-hub takes {' or '.join(HUB_CHUNKS)} (TD-MPC2's published sets), not {set_name!r}")
    name = check_name(name or set_name, "dataset name")
    reg = st.registry()
    run = _unfinished_run(reg.runs_dir, endpoint, set_name, name)
    if run is None:
        run = _start(reg, st, endpoint, HUB_REPO, set_name, name, HUB_CHUNKS[set_name], layout or {})
    else:
        done = published_by(reg, "dataset", name, run)
        if done is not None:  # killed after its publish, before the run folder was removed
            shutil.rmtree(run, ignore_errors=True)
            emit(
                st,
                {"artifact": done.ref, "already": True},
                lambda: typer.echo(f"run {run.name} had already published {done.ref}"),
            )
            return
        info(
            st,
            f"resuming run {run.name}: {len(_converted(run))} of "
            f"{len(read_plan(run, COMMAND)['chunks'])} chunks converted",
        )
    plan = read_plan(run, COMMAND)
    t0 = time.monotonic()
    try:
        with interrupts_as_keyboard_interrupt():
            _fetch_and_convert(st, run, plan)
    except KeyboardInterrupt:
        info(
            st,
            f"interrupted: {len(_converted(run))} of {len(plan['chunks'])} chunks converted and kept in run "
            f"{run.name}; nothing was published. Run the same command again to resume",
        )
        raise typer.Exit(130) from None
    except (HubError, DiskError) as e:  # the network, the Hub or the disk: worth trying again later
        raise type(e)(
            f"{e}. {len(_converted(run))} of {len(plan['chunks'])} chunks are converted and kept in run "
            f"{run.name}, nothing was published: run the same command again to resume"
        ) from None
    artifact = _publish(reg, run, plan)
    metrics = artifact.manifest.get("metrics", {})
    doc = {
        "artifact": artifact.ref,
        "episodes": metrics.get("episodes"),
        "transitions": metrics.get("transitions"),
        "files": len(plan["chunks"]),
        "commit": plan["commit"],
        "seconds": round(time.monotonic() - t0, 2),
    }
    emit(
        st,
        doc,
        lambda: typer.echo(
            f"published {artifact.ref}: {doc['episodes']} episodes, {doc['transitions']} transitions from "
            f"{doc['files']} chunk(s) of dataset repo {plan['repo']}@{plan['commit'][:12]}"
        ),
    )


def _unfinished_run(runs_dir: Path, endpoint: str, set_name: str, name: str) -> Path | None:
    """The newest run folder of this same import (endpoint, set and dataset name), or None."""
    found = []
    for run in runs_dir.glob(f"{RUN_PREFIX}-*"):
        try:
            plan = json.loads((run / PLAN).read_text())
        except (OSError, ValueError):
            continue
        if (plan.get("command"), plan.get("endpoint"), plan.get("task_set"), plan.get("name")) == (
            COMMAND,
            endpoint,
            set_name,
            name,
        ):
            found.append(run)
    return max(found, key=lambda p: p.name) if found else None


def _start(reg, st: State, endpoint: str, repo: str, set_name: str, name: str, n_chunks: int, layout: dict) -> Path:
    """Pin the Hub's current commit, list the chunks, and make the run folder with its plan."""
    from registry.hub import HubError
    from registry.hub_files import FileRef, list_files, resolve_commit

    commit = resolve_commit(FileRef(repo, "dataset", set_name), endpoint)
    listed = {f.name: f for f in list_files(FileRef(repo, "dataset", set_name, commit), endpoint)}
    wanted = [f"chunk_{i}.pt" for i in range(n_chunks)]
    missing = [w for w in wanted if w not in listed]
    if missing:
        raise HubError(
            f"dataset repo {repo} at {commit[:12]} on {endpoint} lacks {set_name}/{', '.join(missing)} "
            f"(TD-MPC2 published {set_name}/chunk_0.pt to chunk_{n_chunks - 1}.pt); nothing was imported"
        )
    chunks = [listed[w] for w in wanted]
    run = reg.new_run_dir(RUN_PREFIX)
    write_plan(
        run,
        {
            "command": COMMAND,
            "endpoint": endpoint,
            "repo": repo,
            "commit": commit,
            "task_set": set_name,
            "name": name,
            "layout": layout,
            "chunks": [{"path": f.ref.path, "size": f.size, "sha256": f.sha256, "git_oid": f.git_oid} for f in chunks],
        },
    )
    total = sum(f.size for f in chunks)
    info(
        st,
        f"importing {set_name}: {n_chunks} chunks, {human_size(total)} to download, from dataset repo {repo} "
        f"at {commit[:12]} on {endpoint}; run {run.name} (if stopped, the same command resumes it)",
    )
    return run


def _fetch_and_convert(st: State, run: Path, plan: dict) -> None:
    from pwm_core.data import EpisodeWriter
    from pwm_core.data.tdmpc2 import IMPORT_SHARD_ROWS, append_chunk
    from pwm_core.tasks import resolve_tasks
    from registry.hub_files import FileRef, HubFile, download

    converted = _converted(run)
    n = len(plan["chunks"])
    if not (run / DATASET_DIR).exists():  # a new run (or one killed before it made its dataset)
        hub = {"repo": plan["repo"], "repo_type": "dataset", "commit": plan["commit"], "endpoint": plan["endpoint"]}
        provenance = {"source": "tdmpc2", "files": [Path(c["path"]).name for c in plan["chunks"]], "hub": hub}
        EpisodeWriter.create(
            run / DATASET_DIR,
            resolve_tasks(plan["task_set"]),
            provenance,
            shard_rows=IMPORT_SHARD_ROWS,
            **plan.get("layout", {}),
        ).close()
    with EpisodeWriter.open(run / DATASET_DIR) as writer:
        for i, chunk in enumerate(plan["chunks"]):
            local = run / Path(chunk["path"]).name
            if chunk["path"] in {c["path"] for c in converted}:
                local.unlink(missing_ok=True)  # converted, then killed before the delete
                continue
            file = HubFile(
                FileRef(plan["repo"], "dataset", chunk["path"], plan["commit"]),
                chunk["size"],
                chunk["sha256"],
                chunk["git_oid"],
                plan["endpoint"],
            )
            label = f"chunk {i + 1}/{n}"
            with ByteProgress(st, f"{label} download {chunk['path']}") as bar:
                download(file, local, progress=bar)
            start = converted[-1]["episodes_end"] if converted else 0
            with Progress(st, f"{label} convert", total=None, every_s=60, unit="episodes") as conv:

                def on_batch(done: int, total: int) -> None:
                    if conv.total != total:
                        conv.set_total(total)
                    conv.update(done - conv.done)

                append_chunk(writer, local, skip_episodes=writer.num_episodes - start, progress=on_batch)
            converted.append({"path": chunk["path"], "episodes_end": writer.num_episodes})
            _write_json(run / CONVERTED, converted)  # recorded before the chunk file goes
            local.unlink()


def _publish(reg, run: Path, plan: dict):
    from pwm_core.data import open_dataset
    from pwmctl.commands.collect import _link_or_copy

    ds = open_dataset(run / DATASET_DIR)
    with reg.stage("dataset", plan["name"]) as staging:
        # Hard links: the run keeps its dataset until the index row is committed (see collect's publish).
        shutil.copytree(run / DATASET_DIR, staging.path / DATASET_DIR, copy_function=_link_or_copy)
        artifact = staging.publish(
            tasks=sorted(ds.per_task_counts()),
            config={
                "source": "tdmpc2",
                "hub": {k: plan[k] for k in ("repo", "commit", "endpoint")},
                "files": [c["path"] for c in plan["chunks"]],
            },
            metrics={"episodes": ds.num_episodes, "transitions": ds.num_transitions},
            extra={"run": run.name},
        )
    shutil.rmtree(run, ignore_errors=True)
    return artifact


def _converted(run: Path) -> list[dict]:
    try:
        return json.loads((run / CONVERTED).read_text())
    except FileNotFoundError:
        return []


def _write_json(path: Path, doc) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)
