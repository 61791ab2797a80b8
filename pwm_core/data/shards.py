"""Shard files of the writer's layout read and written directly, byte for byte what zarr stores.

Zarr's sharded write path costs about half a millisecond of Python per inner chunk (an asyncio task per
chunk and codec), so appending 256-row chunks ran at ~0.1M rows/s while blosc itself encodes ~2M rows/s.
For the layouts :class:`~pwm_core.data.EpisodeWriter` creates (a local store; one sharding codec whose
chunks are little-endian ``bytes`` then ``blosc``, or ``bytes`` alone for an uncompressed dataset, and
whose index is ``bytes`` + ``crc32c`` at the end of the shard), a shard is simple: the encoded chunks in
order, then ``(offset, nbytes)`` little-endian uint64 pairs per chunk (both ``2**64 - 1`` for a chunk
equal to the fill value, which is not stored), then the crc32c of those pairs. :func:`write_rows` writes
an append's shards that way, as zarr would (chunks covered in part are decoded, overlaid and re-encoded;
untouched ones keep their bytes), one shard per task on a small thread pool (blosc releases the GIL).
Every shard file is written to a temporary name and renamed over the old one, as zarr's own store does.
Tests pin the bytes against zarr's.
"""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import google_crc32c  # zarr's own dependency (its crc32c codec)
import numpy as np
import zarr
from numcodecs import Blosc, blosc

from pwm_core.data.episodes import storage_rows
from pwm_core.errors import DatasetError

EMPTY = np.uint64(2**64 - 1)  # a shard index entry of a chunk that is not stored
WRITE_THREADS = 2


def local_shards(arr: zarr.Array) -> Path | None:
    """The array's folder when its shards can be read and written directly: a local store, sharded with the
    index at the end (little-endian uint64 pairs + crc32c), chunks as little-endian bytes, then blosc or
    nothing (what EpisodeWriter creates: ``compression="zstd"`` or ``"none"``); None for any other store or
    codec chain."""
    from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec
    from zarr.codecs.sharding import ShardingCodecIndexLocation
    from zarr.storage import LocalStore

    codecs = arr.metadata.codecs if arr.metadata.zarr_format == 3 else ()
    if not isinstance(arr.store, LocalStore) or len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    sharding = codecs[0]
    little = [c for c in (*sharding.codecs, *sharding.index_codecs) if isinstance(c, BytesCodec)]
    layout_ok = (
        [type(c) for c in sharding.codecs] in ([BytesCodec, BloscCodec], [BytesCodec])
        and [type(c) for c in sharding.index_codecs] == [BytesCodec, Crc32cCodec]
        and all(c.endian is None or c.endian.value == "little" for c in little)
        and sharding.index_location == ShardingCodecIndexLocation.end
        and tuple(sharding.chunk_shape[1:]) == tuple(arr.shape[1:])
        and arr.dtype.byteorder in "<=|"
    )
    return Path(arr.store.root) / arr.path if layout_ok else None


def is_raw(arr: zarr.Array) -> bool:
    """Whether the array's chunks are stored uncompressed (a row is at a fixed offset in its chunk)."""
    return local_shards(arr) is not None and len(arr.metadata.codecs[0].codecs) == 1  # type: ignore[union-attr]


def write_rows(arr: zarr.Array, lo: int, hi: int, values: np.ndarray, threads: int = WRITE_THREADS) -> None:
    """``arr[lo:hi] = values`` for an array already at least ``hi`` rows long, shard files written directly
    when the layout allows it (:func:`local_shards`), else through zarr."""
    folder = local_shards(arr)
    if folder is None:
        arr[lo:hi] = values
        return
    encoder, S = _ShardEncoder(arr), storage_rows(arr)

    def write(shard: int) -> None:
        s0 = shard * S
        a, b = max(lo, s0), min(hi, s0 + S)
        key = arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))
        path = folder / key
        old = path.read_bytes() if (a > s0 or b < s0 + S) and path.exists() else None  # a partial shard
        _replace(path, encoder.encode(a - s0, values[a - lo : b - lo], old, f"{arr.path}/{key}"))

    shards = range(lo // S, -(-hi // S))
    if threads > 1 and len(shards) > 1:
        with ThreadPoolExecutor(min(threads, len(shards)), thread_name_prefix="pwm-shard-write") as pool:
            list(pool.map(write, shards))  # list(): raise the first error
    else:
        for shard in shards:
            write(shard)


class _ShardEncoder:
    """One shard's bytes, as zarr's sharding codec encodes them for this array."""

    def __init__(self, arr: zarr.Array) -> None:
        from zarr.codecs import BloscCodec, ShardingCodec

        sharding = arr.metadata.codecs[0]  # type: ignore[union-attr]
        assert isinstance(sharding, ShardingCodec)  # local_shards checked it
        self._blosc: Blosc | None = None  # None: raw chunks
        if len(sharding.codecs) == 2:
            codec = sharding.codecs[1]
            assert isinstance(codec, BloscCodec)
            self._blosc = Blosc(  # typesize is in the stored metadata (zarr evolves it at creation)
                cname=codec.cname.name,
                clevel=codec.clevel,
                shuffle={"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}[
                    codec.shuffle.name
                ],
                blocksize=codec.blocksize,
                typesize=codec.typesize,
            )
        self.chunk_rows = int(sharding.chunk_shape[0])
        self.per_shard = storage_rows(arr) // self.chunk_rows
        self.row_shape = tuple(arr.shape[1:])
        self.dtype, self.fill = arr.dtype.newbyteorder("<"), arr.fill_value

    def encode(self, start: int, rows: np.ndarray, old: bytes | None, name: str) -> bytes | None:
        """The shard file with ``rows`` at rows ``start..`` of the shard over the ``old`` file's contents
        (None: no file yet); None when every chunk equals the fill value (zarr then stores no file).

        As zarr does it: a chunk the rows cover entirely is encoded from them, one they cover in part is
        decoded from ``old`` (or fill values), overlaid and re-encoded, and the others keep their old bytes;
        no chunk equal to the fill value is stored (zarr's ``write_empty_chunks=False``)."""
        R, n = self.chunk_rows, self.per_shard
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        stop = start + rows.shape[0]
        old_index = self._index(old, name) if old is not None else None
        index = np.full((n, 2), EMPTY, "<u8")
        parts: list[bytes] = []
        offset = 0
        for i in range(n):
            lo, hi = i * R, (i + 1) * R
            if hi <= start or lo >= stop:  # untouched
                if old_index is None or old_index[i, 0] == EMPTY:
                    continue
                o, k = (int(x) for x in old_index[i])
                data = old[o : o + k]  # type: ignore[index]  # old_index is None when old is
            else:
                if start <= lo and hi <= stop:
                    chunk = rows[lo - start : hi - start]
                else:  # in part: the old chunk (or fill values) under the new rows
                    chunk = self._old_chunk(old, old_index, i, name)
                    a, b = max(lo, start), min(hi, stop)
                    chunk[a - lo : b - lo] = rows[a - start : b - start]
                if _all_fill(chunk, self.fill):
                    continue
                flat = chunk.view(np.uint8).reshape(-1)
                data = self._blosc.encode(flat) if self._blosc is not None else flat.tobytes()
            parts.append(data)
            index[i] = offset, len(data)
            offset += len(data)
        if not parts:
            return None
        raw = index.tobytes()
        return b"".join([*parts, raw, np.uint32(google_crc32c.value(raw)).astype("<u4").tobytes()])

    def _index(self, shard: bytes, name: str) -> np.ndarray:
        index = decode_index(shard, self.per_shard)
        if index is None:
            raise DatasetError(
                f"{name}: the stored shard's index is damaged; the dataset is corrupt - `pwmctl data fsck` "
                "lists every damaged chunk"
            )
        return index

    def _old_chunk(self, old: bytes | None, index: np.ndarray | None, i: int, name: str) -> np.ndarray:
        chunk = np.empty((self.chunk_rows, *self.row_shape), self.dtype)
        if old is None or index is None or index[i, 0] == EMPTY:
            chunk.fill(self.fill)
            return chunk
        o, k = (int(x) for x in index[i])
        try:
            if self._blosc is None:
                if k != chunk.nbytes:
                    raise ValueError(f"{k} bytes stored, {chunk.nbytes} expected")
                chunk.reshape(-1).view(np.uint8)[:] = np.frombuffer(old, np.uint8, k, o)
            else:
                blosc.decompress(old[o : o + k], chunk)
        except Exception as e:  # a short read or bad bytes
            raise DatasetError(
                f"{name}: chunk {i} of the stored shard is unreadable ({type(e).__name__}); the dataset is "
                "corrupt - `pwmctl data fsck` lists every damaged chunk"
            ) from None
        return chunk


def decode_index(tail: bytes, per_shard: int) -> np.ndarray | None:
    """A shard's ``(per_shard, 2)`` (offset, nbytes) index from the shard file's last ``16 * per_shard + 4``
    bytes (or the whole file), or None when they are too few or fail their crc32c."""
    n = 16 * per_shard
    raw = tail[-n - 4 :]
    if len(raw) != n + 4 or np.uint32(google_crc32c.value(raw[:-4])).astype("<u4").tobytes() != raw[-4:]:
        return None
    return np.frombuffer(raw[:-4], "<u8").reshape(per_shard, 2)


def _all_fill(chunk: np.ndarray, fill: object) -> bool:
    if chunk.dtype.kind == "f" and np.isnan(fill):  # type: ignore[call-overload]
        return bool(np.isnan(chunk).all())
    return bool((chunk == fill).all())


def _replace(path: Path, data: bytes | None) -> None:
    """Atomically replace (or, for None, remove) one shard file."""
    if data is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
