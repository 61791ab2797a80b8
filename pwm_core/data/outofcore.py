"""Out-of-core window sampler: the in-RAM sampler's windows, read straight from the Zarr arrays on disk.

For datasets larger than RAM. :class:`OutOfCoreSampler` draws exactly the windows
:class:`~pwm_core.data.sampler.WindowSampler` draws for the same episodes and seed (both go through
:class:`~pwm_core.data.sampler.WindowIndex`), so a run can switch between the two and stay bitwise the
same. Per batch, for each dataset and array, on an uncompressed dataset (``compression="none"``,
``pwmctl data rechunk``): each window's rows are one byte range of a shard file, read with one ``preadv``
straight into the batch on a small thread pool, and checked for NaN / inf. On a compressed one:

1. batched gather: the B x (H+1) rows become the set of chunks they fall in, sorted by position on
   disk (chunk-aware order: each chunk is read and decoded once per batch, shards in file order);
2. chunks come from a bounded LRU cache of decoded chunks, or are read: on local disk, for the
   writer's layout (sharded, blosc), each chunk is one ``pread`` of its bytes at the offset the
   shard's index gives plus one blosc decode, on a small thread pool (both release the GIL); other
   stores or codecs go through one zarr orthogonal selection per array and batch;
3. every chunk read is checked for NaN / inf in the rows of the sampled episodes (an episode's NaN
   first action / reward is the format's) and refused as the in-RAM sampler refuses it.

A background thread prepares the next ``prefetch`` batches while the caller trains on the current
one. Their windows are drawn from the generator in the caller's thread, in order; the sampler's
state (:meth:`OutOfCoreSampler.get_state`) is the generator's state before the first batch not yet
returned, so a checkpoint resumes with exactly the next batch.

Cost model: compressed, a window of H+1 = 17 rows touches about 1 + H / chunk_rows chunks per array,
so the bytes decoded per window are ~chunk_rows x 124 B (obs 24 + action 6 + reward float32 columns):
500 KB at the writer's default 4096-row chunks, 32 KB at 256-row chunks (8,022 windows/s from the page
cache, docs/benchmarks.md section 7). Uncompressed: 3 reads of 2.1 KB in all per window (67,411
windows/s from the page cache; out of core, as many as the disk's random reads allow / 3).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
import zarr
from numcodecs import blosc

from pwm_core.data.episodes import ACTION, OBS, REWARD, storage_key, storage_rows
from pwm_core.data.reader import EpisodeDataset
from pwm_core.data.sampler import Batch, WindowIndex, nan_error, select_episodes, target_dims
from pwm_core.data.shards import EMPTY, decode_index, is_raw, local_shards
from pwm_core.errors import DatasetError

CACHE_BYTES = 256 * 2**20  # decoded chunks kept per sampler (LRU)
PREFETCH = 2  # batches prepared ahead in the background
READ_THREADS = 2  # chunk reads + decodes in parallel
_FIELDS = (("obs", OBS), ("action", ACTION), ("reward", REWARD))


class OutOfCoreSampler:
    """Uniform H+1-row windows, as :class:`~pwm_core.data.sampler.WindowSampler`, read from disk per batch.

    Same arguments and batches as ``WindowSampler`` (same seed -> same windows), plus ``prefetch``
    (batches prepared ahead by a background thread; 0: read when asked), ``cache_bytes`` (decoded
    chunks kept) and ``read_threads``. Call :meth:`close` (or let it be collected) to stop its threads.
    """

    def __init__(
        self,
        dataset: EpisodeDataset | Sequence[EpisodeDataset],
        horizon: int,
        batch_size: int,
        tasks: Sequence[int | str] | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        *,
        episodes: Sequence[np.ndarray] | None = None,
        obs_dim: int | None = None,
        act_dim: int | None = None,
        prefetch: int = PREFETCH,
        cache_bytes: int = CACHE_BYTES,
        read_threads: int = READ_THREADS,
    ) -> None:
        datasets = [dataset] if isinstance(dataset, EpisodeDataset) else list(dataset)
        if horizon < 1 or batch_size < 1:
            raise ValueError(f"horizon and batch_size must be >= 1, got {horizon}, {batch_size}")
        if prefetch < 0 or read_threads < 1:
            raise ValueError(f"prefetch must be >= 0 and read_threads >= 1, got {prefetch}, {read_threads}")
        self.horizon, self.batch_size, self.device = horizon, batch_size, torch.device(device)
        self.prefetch = prefetch
        selections = select_episodes(datasets, tasks, episodes)
        self.obs_dim, self.act_dim = target_dims(datasets, obs_dim, act_dim)
        lengths = torch.from_numpy(np.concatenate([ds.episode_lengths[s] for ds, s in zip(datasets, selections)]))
        ep_task = np.concatenate([ds.episode_task[s] for ds, s in zip(datasets, selections)]).astype(np.int64)
        self.index = WindowIndex(lengths.long(), torch.from_numpy(ep_task), horizon)
        self.num_windows, self.num_episodes = self.index.num_windows, self.index.num_episodes
        keep = self.index.keep.numpy()
        # per kept episode: its dataset and first row there (the in-RAM sampler's row, relocated)
        self._dataset_of = np.concatenate([np.full(s.size, i) for i, s in enumerate(selections)])[keep]
        self._first_row = np.concatenate([ds.episode_starts[s] for ds, s in zip(datasets, selections)])[keep]
        self._task = self.index.task
        self._cache = _ChunkCache(cache_bytes)
        self._pool = ThreadPoolExecutor(read_threads, thread_name_prefix="pwm-chunk-read")
        self._sources = [_Source(ds, s, self._pool) for ds, s in zip(datasets, selections)]
        self._generator = torch.Generator().manual_seed(seed)
        self._pending: deque[tuple[torch.Tensor, Future[Batch]]] = deque()
        self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="pwm-prefetch")
        self._finalizer = weakref.finalize(self, _shutdown, self._prefetcher, self._pool)

    @property
    def nbytes(self) -> int:
        """Bytes of decoded chunks held in the cache."""
        return self._cache.nbytes

    def sample(self) -> Batch:
        """B windows drawn uniformly (with replacement) over all valid start rows (as WindowSampler)."""
        if not self._pending:
            self._submit()
        _, batch = self._pending.popleft()
        while len(self._pending) < self.prefetch:  # the next batches are read while the caller trains
            self._submit()
        return batch.result().to(self.device)

    # The stream's state, for checkpoints: that of the first batch not returned yet
    def get_state(self) -> torch.Tensor:
        return self._pending[0][0].clone() if self._pending else self._generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self._drop_pending()
        self._generator.set_state(state)

    def manual_seed(self, seed: int) -> None:
        self._drop_pending()
        self._generator.manual_seed(seed)

    def close(self) -> None:
        """Stop the background threads (pending batches are dropped)."""
        self._drop_pending()
        self._finalizer()

    # ------------------------------------------------------------------------------- internals
    def _submit(self) -> None:
        state = self._generator.get_state()
        episode, offset = self.index.draw(self._generator, self.batch_size)
        self._pending.append((state, self._prefetcher.submit(self._read, episode, offset)))

    def _drop_pending(self) -> None:
        while self._pending:
            _, future = self._pending.pop()
            if not future.cancel():
                future.exception()  # wait for it; an error of a batch nobody asked for is not raised

    def _read(self, episode: torch.Tensor, offset: torch.Tensor) -> Batch:
        """The windows (kept-episode index, start offset) gathered from disk, on the CPU."""
        H, B = self.horizon, self.batch_size
        ep = episode.numpy()
        source_of, start = self._dataset_of[ep], self._first_row[ep] + offset.numpy()
        obs = np.zeros((H + 1, B, self.obs_dim), np.float32)  # zero padding, as the in-RAM sampler's
        action = np.zeros((H, B, self.act_dim), np.float32)
        reward = np.empty((H, B), np.float32)
        for i in np.unique(source_of):
            cols = np.flatnonzero(source_of == i)
            rows = start[cols][None, :] + np.arange(H + 1)[:, None]  # (H+1, b) rows of dataset i
            src = self._sources[i]
            obs[:, cols, : src.dataset.obs_dim] = src.gather("obs", rows, self._cache)
            action[:, cols, : src.dataset.act_dim] = src.gather("action", rows[1:], self._cache)
            reward[:, cols] = src.gather("reward", rows[1:], self._cache)
        return Batch(torch.from_numpy(obs), torch.from_numpy(action), torch.from_numpy(reward), self._task[episode])


class _ChunkCache:
    """Decoded chunks by (dataset, array, chunk), least recently used dropped beyond ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.nbytes = max_bytes, 0
        self._chunks: OrderedDict[tuple[int, str, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[int, str, int]) -> np.ndarray | None:
        with self._lock:
            chunk = self._chunks.get(key)
            if chunk is not None:
                self._chunks.move_to_end(key)
            return chunk

    def put(self, key: tuple[int, str, int], chunk: np.ndarray) -> None:
        if chunk.nbytes > self.max_bytes:
            return
        with self._lock:
            if key not in self._chunks:
                self._chunks[key] = chunk
                self.nbytes += chunk.nbytes
            while self.nbytes > self.max_bytes:
                _, old = self._chunks.popitem(last=False)
                self.nbytes -= old.nbytes


class _Source:
    """One dataset's obs / action / reward arrays as decoded chunks, checked for NaN / inf."""

    def __init__(self, dataset: EpisodeDataset, selected: np.ndarray, pool: ThreadPoolExecutor) -> None:
        self.dataset, self._pool = dataset, pool
        self._selected = np.zeros(dataset.num_episodes + 1, bool)  # + 1: rows past the committed ones
        self._selected[selected] = True
        self._starts = np.append(dataset.episode_starts, dataset.num_rows)  # + 1, as _selected
        self._arrays = {key: _ChunkedArray(dataset.array(name), name, dataset.path) for key, name in _FIELDS}
        self._key = id(self)

    def gather(self, key: str, rows: np.ndarray, cache: _ChunkCache) -> np.ndarray:
        """``array[rows]`` for (n, b) rows, each column n consecutive rows: shape ``(n, b) + row shape``."""
        arr = self._arrays[key]
        if arr.raw:  # uncompressed: one read per window, no chunk decoded
            windows = arr.read_windows(rows[0], rows.shape[0], self._pool)
            if windows is not None:
                if not np.isfinite(windows).all():
                    for j in np.flatnonzero(
                        ~np.isfinite(windows.reshape(windows.shape[0], rows.shape[1], -1)).all((0, 2))
                    ):
                        self._check_finite(key, int(rows[0, j]), windows[:, j])
                return windows
        chunk_of = rows // arr.chunk_rows
        need = np.unique(chunk_of)  # sorted: the order of the chunks on disk
        chunks: list[np.ndarray | None] = [cache.get((self._key, key, int(c))) for c in need]
        missing = [i for i, c in enumerate(chunks) if c is None]
        if missing:
            read = arr.read(need[missing], self._pool)
            for i, chunk in zip(missing, read):
                self._check_finite(key, int(need[i]) * arr.chunk_rows, chunk)
                cache.put((self._key, key, int(need[i])), chunk)
                chunks[i] = chunk
        # each chunk's rows copied straight into the output (sorted by chunk), no stack of all the chunks
        flat_rows, flat_chunk = rows.reshape(-1), chunk_of.reshape(-1)
        order = np.argsort(flat_chunk, kind="stable")
        bounds = np.searchsorted(flat_chunk[order], need, side="right")
        out = np.empty((flat_rows.size, *arr.row_shape), arr.arr.dtype)
        lo = 0
        for c, decoded, hi in zip(need, chunks, bounds):
            at = order[lo:hi]
            assert decoded is not None  # all filled above
            out[at] = decoded[flat_rows[at] - int(c) * arr.chunk_rows]
            lo = hi
        return out.reshape(*rows.shape, *arr.row_shape)

    def _check_finite(self, key: str, lo: int, chunk: np.ndarray) -> None:
        """Refuse NaN / inf in the rows of sampled episodes (the first row's action / reward excepted)."""
        finite = np.isfinite(chunk) if chunk.ndim == 1 else np.isfinite(chunk).all(1)
        if finite.all():
            return
        ds = self.dataset
        rows = lo + np.flatnonzero(~finite)
        episode = np.searchsorted(ds.episode_ends, rows, side="right")  # num_episodes past the committed rows
        bad = self._selected[episode]
        if key != "obs":
            bad &= rows != self._starts[episode]
        if bad.any():
            row, e = int(rows[np.argmax(bad)]), int(episode[np.argmax(bad)])
            raise nan_error(ds, e, row - int(ds.episode_starts[e]), "obs" if key == "obs" else "action/reward")


class _ChunkedArray:
    """Whole chunks of one Zarr array, decoded: ``pread`` + blosc on the writer's local sharded layout,
    else zarr itself (any store, any codec)."""

    def __init__(self, arr: zarr.Array, name: str, path: str) -> None:
        self.arr, self.name, self.path = arr, name, path
        self.chunk_rows = int(arr.chunks[0])
        self.row_shape = tuple(arr.shape[1:])
        self._shard_rows = storage_rows(arr)
        self._dir = local_shards(arr)
        self.raw = self._dir is not None and is_raw(arr)
        self._row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * arr.dtype.itemsize
        self._indices: OrderedDict[int, np.ndarray] = OrderedDict()  # shard -> (chunks, 2) offsets, lengths
        self._dense: dict[int, tuple[int, int]] = {}  # shard -> (offset of its row 0, rows stored contiguously)
        self._lock = threading.Lock()

    def read_windows(self, starts: np.ndarray, n: int, pool: ThreadPoolExecutor) -> np.ndarray | None:
        """Rows ``starts[j] .. starts[j] + n - 1`` of each window j, ``(n, b) + row shape``, for an uncompressed
        array: one ``preadv`` per window and shard straight into the output. None when a window reaches rows
        not stored contiguously from a shard's start (missing chunks: the caller reads whole chunks instead)."""
        b = starts.size
        out = np.empty((b, n, *self.row_shape), self.arr.dtype)  # window-major: a window is one byte range
        order = np.argsort(starts, kind="stable")  # file order
        k = min(pool._max_workers, max(b // 64, 1))
        parts = [order[i * b // k : (i + 1) * b // k] for i in range(k)]
        view = memoryview(out.reshape(-1).view(np.uint8))  # type: ignore[arg-type]  # numpy arrays are buffers
        if k == 1:
            ok = self._read_windows(starts, n, parts[0], view)
        else:
            ok = all(pool.map(lambda part: self._read_windows(starts, n, part, view), parts))
        return out.swapaxes(0, 1) if ok else None

    def _read_windows(self, starts: np.ndarray, n: int, windows: np.ndarray, out: memoryview) -> bool:
        assert self._dir is not None
        S, rb, fd, fd_shard = self._shard_rows, self._row_bytes, -1, -1
        try:
            for j in windows.tolist():
                row, left, pos = int(starts[j]), n, j * n * rb
                while left:
                    shard = row // S
                    k = min(left, (shard + 1) * S - row)
                    if shard != fd_shard:
                        if fd >= 0:
                            os.close(fd)
                            fd = -1
                        fd, fd_shard = self._open(shard), shard
                    base, dense = self._dense_rows(fd, shard)
                    if row - shard * S + k > dense:
                        return False
                    got = os.preadv(fd, [out[pos : pos + k * rb]], base + (row - shard * S) * rb)
                    if got != k * rb:
                        raise self._corrupt(
                            storage_key(self.arr, shard * S), row // self.chunk_rows, OSError("short read")
                        )
                    row, left, pos = row + k, left - k, pos + k * rb
            return True
        finally:
            if fd >= 0:
                os.close(fd)

    def _dense_rows(self, fd: int, shard: int) -> tuple[int, int]:
        """(byte offset of the shard's row 0, rows from row 0 stored contiguously) for an uncompressed shard."""
        dense = self._dense.get(shard)
        if dense is None:
            per_shard = self._shard_rows // self.chunk_rows
            index = self._shard_index(fd, shard, storage_key(self.arr, shard * self._shard_rows), per_shard)
            chunk_bytes = self.chunk_rows * self._row_bytes
            expected = index[0, 0] + np.arange(per_shard, dtype=np.uint64) * np.uint64(chunk_bytes)
            good = (index[:, 0] == expected) & (index[:, 1] == chunk_bytes) & (index[:, 0] != EMPTY)
            m = per_shard if good.all() else int(np.argmin(good))
            dense = (int(index[0, 0]) if m else 0, m * self.chunk_rows)
            with self._lock:
                if len(self._dense) > 65536:
                    self._dense.clear()
                self._dense[shard] = dense
        return dense

    def _open(self, shard: int) -> int:
        assert self._dir is not None
        key = storage_key(self.arr, shard * self._shard_rows)
        try:
            return os.open(self._dir / key, os.O_RDONLY)
        except FileNotFoundError:
            raise DatasetError(
                f"{self.path}: {self.name} stored object {key} is missing; the dataset is corrupt - "
                "`pwmctl data fsck` lists every damaged chunk"
            ) from None

    def read(self, chunks: np.ndarray, pool: ThreadPoolExecutor) -> list[np.ndarray]:
        """The decoded chunks ``chunks`` (sorted indices), each (chunk_rows, *row shape)."""
        if self._dir is None:
            return self._read_zarr(chunks)
        per_shard = self._shard_rows // self.chunk_rows
        shards = chunks // per_shard
        groups = np.split(chunks, np.flatnonzero(np.diff(shards)) + 1)  # per shard file, in file order
        n = min(pool._max_workers, len(groups))
        if n <= 1:
            return self._read_shards(groups)
        parts = [groups[i * len(groups) // n : (i + 1) * len(groups) // n] for i in range(n)]  # one task per thread
        return [chunk for part in pool.map(self._read_shards, parts) for chunk in part]

    def _read_shards(self, groups: list[np.ndarray]) -> list[np.ndarray]:
        return [chunk for g in groups for chunk in self._read_shard(g)]

    def _read_shard(self, chunks: np.ndarray) -> list[np.ndarray]:
        per_shard = self._shard_rows // self.chunk_rows
        shard = int(chunks[0]) // per_shard
        key = storage_key(self.arr, shard * self._shard_rows)
        assert self._dir is not None
        fd = self._open(shard)
        try:
            index = self._shard_index(fd, shard, key, per_shard)
            out = []
            for c in chunks:
                offset, nbytes = index[int(c) % per_shard]
                chunk = np.empty((self.chunk_rows, *self.row_shape), self.arr.dtype)
                if offset == EMPTY:  # never written: zarr's fill value (NaN rows are refused by the caller)
                    chunk.fill(self.arr.fill_value)
                else:
                    data = os.pread(fd, int(nbytes), int(offset))
                    try:
                        if self.raw:
                            chunk.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, np.uint8, chunk.nbytes)
                        else:
                            blosc.decompress(data, chunk)
                    except Exception as e:  # a short read or bad bytes
                        raise self._corrupt(key, int(c), e) from None
                out.append(chunk)
            return out
        finally:
            os.close(fd)

    def _shard_index(self, fd: int, shard: int, key: str, per_shard: int) -> np.ndarray:
        with self._lock:
            index = self._indices.get(shard)
            if index is not None:
                self._indices.move_to_end(shard)
                return index
        size = os.fstat(fd).st_size
        tail = os.pread(fd, 16 * per_shard + 4, size - 16 * per_shard - 4) if size >= 16 * per_shard + 4 else b""
        index = decode_index(tail, per_shard)
        if index is None:
            raise DatasetError(
                f"{self.path}: {self.name} stored object {key} has a damaged shard index; the dataset "
                "is corrupt - `pwmctl data fsck` lists every damaged chunk"
            )
        with self._lock:
            self._indices[shard] = index
            while len(self._indices) > 4096:  # 64 KB each at most (4096 chunks per shard)
                self._indices.popitem(last=False)
        return index

    def _read_zarr(self, chunks: np.ndarray) -> list[np.ndarray]:
        R, n = self.chunk_rows, self.arr.shape[0]
        rows = np.concatenate([np.arange(c * R, min((c + 1) * R, n)) for c in chunks])
        try:
            values = np.asarray(self.arr.oindex[rows])  # one batched orthogonal read: each chunk decoded once
        except Exception:  # zarr/numcodecs raise many types on bad bytes: find the chunk, name it
            for c in chunks:
                try:
                    self.arr[c * R : min((c + 1) * R, n)]
                except Exception as e:
                    raise self._corrupt(storage_key(self.arr, int(c) * R), int(c), e) from None
            raise
        out, pos = [], 0
        for c in chunks:
            k = min((c + 1) * R, n) - c * R
            chunk = np.full((R, *self.row_shape), self.arr.fill_value, self.arr.dtype)
            chunk[:k] = values[pos : pos + k]
            out.append(chunk)
            pos += k
        return out

    def _corrupt(self, key: str, chunk: int, e: BaseException) -> DatasetError:
        lo = chunk * self.chunk_rows
        return DatasetError(
            f"{self.path}: {self.name} rows {lo}-{lo + self.chunk_rows - 1} are unreadable (stored "
            f"object {key}: {type(e).__name__}: {' '.join(str(e).split())[:160]}); the dataset is "
            "corrupt - `pwmctl data fsck` lists every damaged chunk"
        )


def _shutdown(*executors: ThreadPoolExecutor) -> None:
    for ex in executors:  # no wait: the last reference may be dropped in one of their own threads
        ex.shutdown(wait=False, cancel_futures=True)
