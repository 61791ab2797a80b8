"""Shard files written directly (pwm_core.data.shards) are byte for byte what zarr writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from pwm_core.data.shards import is_raw, local_shards, write_rows
from pwm_core.errors import DatasetError

R, S = 8, 32  # rows per chunk, per shard: small, so every case (whole / partial shards and chunks) is cheap


def _pair(tmp_path: Path, cols: tuple[int, ...], dtype: str, fill, raw: bool = False) -> tuple[zarr.Array, zarr.Array]:
    arrays = []
    for name in ("zarr", "direct"):
        group = zarr.open_group(tmp_path / f"{name}.zarr", mode="w", zarr_format=3)
        arrays.append(
            group.create_array(
                "x",
                shape=(0, *cols),
                chunks=(R, *cols),
                shards=(S, *cols),
                dtype=dtype,
                fill_value=fill,
                compressors=None if raw else (BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),),
            )
        )
    return arrays[0], arrays[1]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("raw", [False, True], ids=["blosc", "raw"])
@pytest.mark.parametrize(
    "cols,dtype,fill", [((5,), "float32", np.nan), ((), "float32", np.nan), ((), "int16", -1), ((), "int64", 0)]
)
def test_appends_write_the_bytes_zarr_writes(tmp_path, cols, dtype, fill, raw):
    ref, direct = _pair(tmp_path, cols, dtype, fill, raw)
    assert local_shards(direct) is not None and is_raw(direct) == raw
    rng = np.random.default_rng(0)
    # appends that start and end inside chunks and shards, span several shards, a truncation that leaves
    # stale rows in a shard file, and chunks that are entirely fill (not stored)
    steps = [(0, 3), (3, 37), (37, 40), (40, 150), ("resize", 120), (120, 121), (121, 200), (200, 232)]
    for step in steps:
        if step[0] == "resize":
            for a in (ref, direct):
                a.resize((step[1], *cols))
            continue
        lo, hi = step
        v = (rng.standard_normal((hi - lo, *cols)) * 100).astype(dtype)
        if lo == 40:
            v[8:24] = fill  # two whole chunks of fill values (rows 48-63)
            v[1] = fill
        for a in (ref, direct):
            a.resize((hi, *cols))
        ref[lo:hi] = v
        write_rows(direct, lo, hi, v, threads=2)
        assert _files(tmp_path / "direct.zarr" / "x") == _files(tmp_path / "zarr.zarr" / "x"), step
    np.testing.assert_array_equal(direct[:], ref[:])
    assert not list((tmp_path / "direct.zarr").rglob("*.partial"))


def test_other_layouts_go_through_zarr(tmp_path):
    group = zarr.open_group(tmp_path / "plain.zarr", mode="w", zarr_format=3)
    arr = group.create_array("x", shape=(20,), chunks=(8,), dtype="float32")  # not sharded
    assert local_shards(arr) is None
    write_rows(arr, 0, 20, np.arange(20, dtype="float32"))
    np.testing.assert_array_equal(arr[:], np.arange(20))


def test_a_damaged_shard_index_is_refused_not_overwritten(tmp_path):
    _, direct = _pair(tmp_path, (), "float32", np.nan)
    direct.resize((20,))
    write_rows(direct, 0, 20, np.arange(20, dtype="float32"))
    shard = tmp_path / "direct.zarr" / "x" / "c" / "0"
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x00")
    before = shard.read_bytes()
    direct.resize((30,))
    with pytest.raises(DatasetError, match="index is damaged"):
        write_rows(direct, 20, 30, np.arange(10, dtype="float32"))
    assert shard.read_bytes() == before
