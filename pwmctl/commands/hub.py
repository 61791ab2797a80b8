"""`pwmctl push | pull`: share artifact versions on the Hugging Face Hub (see registry/hub.py)."""

from __future__ import annotations

import typer

from pwmctl.console import State, emit, fail, human_size, info, state, stderr

MAX_FILES_SHOWN = 20  # per plan in human output; --format json lists every file

_ENDPOINT_HELP = "Hub URL (default: config hub.endpoint, else HF_ENDPOINT, else https://huggingface.co)."


def push(
    ctx: typer.Context,
    ref: str = typer.Argument(None, help="Artifact ref kind/name:vN (default: every version not yet on the Hub)."),
    repo: str = typer.Option(None, "--repo", help="Hub repo ORG/NAME (default: NAMESPACE/NAME)."),
    namespace: str = typer.Option(
        None, "--namespace", help="Hub user or org for repos not named by --repo (default: config hub.namespace)."
    ),
    private: bool = typer.Option(False, "--private", help="Create new repos as private."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the commit plan (files, sizes, sha256, repo, tag); touch nothing."
    ),
    hub_endpoint: str = typer.Option(None, "--hub-endpoint", envvar="PWMCTL_HUB_ENDPOINT", help=_ENDPOINT_HELP),
    license: str = typer.Option(
        None,
        "--license",
        help="Hub license id for the cards (mit, apache-2.0, "
        "cc-by-4.0, other, ...) \\[default: config hub.license, else mit].",
    ),
) -> None:
    """Push artifact versions to the Hub: one commit per version, tagged vN, recorded here.

    Datasets go to dataset repos, world models and policies to model repos. Without REF: every
    version not yet on that Hub, datasets first, then world models, then policies (eval reports
    go into the policy cards; push one by its ref to share it). Each commit has a card (README.md:
    license, usage, results, lineage, citation); a dataset also gets Parquet previews for the Hub's
    dataset viewer and a policy the replay video of its newest `pwmctl eval --video`, under preview/.
    """
    from registry import hub

    st = state(ctx)
    reg = st.registry()
    endpoint = _endpoint(st, hub_endpoint)
    license = hub.check_license(license or _config(st).get("hub.license") or hub.DEFAULT_LICENSE)
    if ref is None and repo is not None:
        raise fail(
            "--repo names one repo: give the REF to push there too, or drop --repo to push every "
            "version to NAMESPACE/NAME"
        )
    if ref is not None:
        artifact = reg.resolve(ref)
        ns = namespace or _config(st).get("hub.namespace")
        targets = [(artifact, repo or hub.default_repo(reg, artifact, ns, endpoint) or _namespace(st, None))]
    else:
        ns = _namespace(st, namespace)
        targets = [(a, hub.default_repo(reg, a, ns, endpoint)) for a in hub.unpushed(reg, endpoint)]
    for _, target in targets:  # a bad repo id is the one line, before previews are made
        hub.check_repo_id(target)
    if dry_run:
        plans = [
            hub.plan_push(reg, a.ref, r, endpoint=endpoint, private=private, license=license, extras=_previews(st, a))
            for a, r in targets
        ]
        emit(
            st,
            {"dry_run": True, "endpoint": endpoint, "plans": [p.to_dict() for p in plans]},
            lambda: _print_plans(plans, endpoint),
        )
        return
    _quiet_hub(st)
    results = []
    for artifact, target in targets:
        plan = hub.plan_push(
            reg,
            artifact.ref,
            target,
            endpoint=endpoint,
            private=private,
            license=license,
            extras=_previews(st, artifact),
        )
        if plan.already is None:
            info(
                st,
                f"pushing {artifact.ref} to {target} as {plan.tag}: {len(plan.files)} files, "
                f"{human_size(plan.total_bytes)}",
            )
        result = hub.push(reg, plan)
        results.append(result)
        if not st.json:
            _print_push(result)
    if not targets:
        info(st, f"nothing to push: every dataset, world model and policy in {st.home} is on {endpoint}")
    emit(st, {"endpoint": endpoint, "pushed": [r.to_dict() for r in results]})


def pull(
    ctx: typer.Context,
    spec: str = typer.Argument(
        ..., help="ORG/NAME@vN, ORG/NAME@SHA, or ORG/NAME for the head of main; datasets/ORG/NAME names a dataset repo."
    ),
    repo_type: str = typer.Option(None, "--repo-type", help="model | dataset (default: try both)."),
    offline: bool = typer.Option(
        False, "--offline", help="Use only versions already pulled or pushed here; no network."
    ),
    hub_endpoint: str = typer.Option(None, "--hub-endpoint", envvar="PWMCTL_HUB_ENDPOINT", help=_ENDPOINT_HELP),
) -> None:
    """Pull one artifact version from the Hub: pinned to its commit, every file checked against
    manifest.json, registered as the next local version with its lineage."""
    from registry import hub

    st = state(ctx)
    if repo_type is not None and repo_type not in ("model", "dataset"):
        raise fail(f"--repo-type must be model or dataset, not {repo_type!r}")
    _quiet_hub(st)
    result = hub.pull(st.registry(), spec, repo_type=repo_type, endpoint=_endpoint(st, hub_endpoint), offline=offline)

    def human() -> None:
        r, a = result.remote, result.artifact
        if result.already:
            typer.echo(f"already have {r.hub_id} (commit {r.commit_sha[:12]}) as {a.ref}")
            return
        typer.echo(
            f"pulled {a.ref} from {r.hub_id} (commit {r.commit_sha[:12]}): "
            f"{len(a.manifest['files'])} files verified, {human_size(a.size_bytes)}"
        )
        if result.linked:
            typer.echo(f"parents here: {', '.join(result.linked)}")
        for hub_id in result.hub_only:
            typer.echo(f"parent not here: {hub_id} (`pwmctl pull {hub_id}` for the whole lineage)")

    emit(st, result.to_dict(), human)


def _config(st: State) -> dict[str, str]:
    from pwmctl.commands.config import read_config

    return read_config(st.home)


def _endpoint(st: State, flag: str | None) -> str:
    """--hub-endpoint / PWMCTL_HUB_ENDPOINT, else config hub.endpoint, else HF_ENDPOINT or the Hub."""
    from registry.hub import resolve_endpoint

    return resolve_endpoint(flag or _config(st).get("hub.endpoint"))


def _namespace(st: State, flag: str | None) -> str:
    """--namespace, else config hub.namespace; a one-line error saying how to set one."""
    ns = flag or _config(st).get("hub.namespace")
    if not ns:
        raise fail(
            "no Hub namespace to name repos under: run `pwmctl config set hub.namespace NAME` "
            "or pass --namespace NAME (or --repo ORG/NAME with a REF)"
        )
    return ns


def _quiet_hub(st: State) -> None:
    """huggingface_hub's progress bars (one per file: a Zarr store has hundreds) go to stderr; keep
    them off with -q, --format json, and when stderr is no terminal (logs get one line per artifact)."""
    if st.quiet or not stderr.is_terminal:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def _previews(st: State, artifact):
    """A dataset's Parquet previews for the Hub's dataset viewer ([] for other kinds, or without pyarrow)."""
    if artifact.kind != "dataset":
        return []
    from pwm_core.data import open_dataset
    from pwm_core.data.parquet import preview_tables
    from pwm_core.errors import PwmError
    from pwmctl.commands.collect import DATASET_DIR
    from registry.cards import PREVIEW_EPISODES, PREVIEW_TASKS
    from registry.hub import Extra

    try:
        episodes, tasks, what = preview_tables(open_dataset(artifact.path / DATASET_DIR), {"dataset": artifact.ref})
    except PwmError as e:  # pyarrow missing, or no episodes: the push goes on without previews
        info(st, f"{artifact.ref}: no Parquet preview for the dataset viewer ({e})")
        return []
    return [
        Extra(PREVIEW_EPISODES, what, content=episodes),
        Extra(
            PREVIEW_TASKS, "one row per task: episodes, rows, transitions, return mean / std / min / max", content=tasks
        ),
    ]


def _print_plans(plans, endpoint: str) -> None:
    if not plans:
        typer.echo(f"nothing to push: every dataset, world model and policy is on {endpoint}")
    for plan in plans:
        where = f"{plan.repo_type} repo {plan.repo} as tag {plan.tag} on {plan.endpoint}"
        if plan.already:
            typer.echo(
                f"{plan.artifact.ref}: already at {plan.already.hub_id} (commit "
                f"{plan.already.commit_sha[:12]}); nothing to push"
            )
            continue
        typer.echo(
            f"would push {plan.artifact.ref} to {where}{' (private)' if plan.private else ''}: "
            f"one commit, {len(plan.files)} files, {human_size(plan.total_bytes)}"
        )
        for f in plan.files[:MAX_FILES_SHOWN]:
            typer.echo(f"  {f.path}  {human_size(f.size)}  sha256 {f.sha256}")
        if len(plan.files) > MAX_FILES_SHOWN:
            typer.echo(f"  ... {len(plan.files) - MAX_FILES_SHOWN} more (--format json lists all)")


def _print_push(result) -> None:
    r = result.remote
    if result.already:
        typer.echo(f"{result.plan.artifact.ref}: already at {r.hub_id} (commit {r.commit_sha[:12]})")
    else:
        typer.echo(f"pushed {result.plan.artifact.ref} to {r.hub_id} (commit {r.commit_sha[:12]}) {r.url}")
