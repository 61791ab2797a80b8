"""Helpers shared by the benchmark scripts: devices, timing sync, autocast, the results file, the machine.

Not a benchmark itself; ``run_all.py`` and every ``bench_*.py`` import it (the scripts run with
``benchmarks/`` on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results.jsonl"
DEVICE_HELP = (
    "auto (the CPU, and the GPU too when CUDA is present: one JSON line per device) | cpu | cuda | "
    "cuda:N | a comma list"
)


def devices(arg: str) -> list[torch.device]:
    """``--device`` -> the devices to benchmark, in order. ``auto``: CPU, plus cuda:0 when CUDA is present."""
    out: list[torch.device] = []
    for part in (p.strip() for p in str(arg).split(",") if p.strip()):
        if part == "auto":
            out.append(torch.device("cpu"))
            if torch.cuda.is_available():
                out.append(torch.device("cuda", 0))
            continue
        device = torch.device(part)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit(f"--device {part}: CUDA is not available in this torch build / machine")
        out.append(device)
    return list(dict.fromkeys(out)) or [torch.device("cpu")]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that wall-clock timings are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    """A fresh context manager: bf16 autocast on ``device`` for ``precision == "bf16"``, else nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise SystemExit(f"unknown precision {precision!r}: use fp32 or bf16")
    return nullcontext()


def device_name(device: torch.device) -> str:
    """``cpu`` or the CUDA device's marketing name, for tables."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def command() -> str:
    """This process's command line as a user would type it (``python benchmarks/x.py ...``)."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path(__file__).resolve().parent.parent)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])


def common_fields(device: torch.device | None, quick: bool) -> dict:
    """Keys every new record carries (old lines may lack some of them)."""
    fields = {
        "time": now(),
        "host": platform.node(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "quick": quick,
        "command": command(),
    }
    if device is not None:
        fields["device"] = str(device)
        fields["device_name"] = device_name(device)
    return fields


def append_record(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def rounded(row: dict, digits: int = 4) -> dict:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in row.items()}


# --- the machine -----------------------------------------------------------------------------------

FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    key, value = (s.strip() for s in line.split(":", 1))
                    info.setdefault(key, value)  # the first processor's
    except OSError:
        pass
    return info


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def machine() -> dict:
    """What the results depend on: CPU model, cores, vector/matrix flags, RAM, load, versions, GPU."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            meminfo = dict(line.split(":", 1) for line in f)
        mem_gib = round(int(meminfo["MemTotal"].split()[0]) / 2**20, 1)
    except (OSError, KeyError, ValueError):
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    out = {
        "cpu_model": cpu_model(),
        "cpu_family": info.get("cpu family"),
        "cpu_model_number": info.get("model"),
        "cpu_stepping": info.get("stepping"),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "torch_threads": torch.get_num_threads(),
        "cpu_flags": [f for f in FLAGS if f in flags],
        "ram_gib": mem_gib,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cuda": None,
    }
    try:
        import numpy
        import zarr

        out["numpy"], out["zarr"] = numpy.__version__, zarr.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out["cuda"] = {
            "name": props.name,
            "count": torch.cuda.device_count(),
            "memory_gib": round(props.total_memory / 2**30, 1),
            "version": torch.version.cuda,
            "capability": f"{props.major}.{props.minor}",
        }
    return out
