"""Content-addressed cache entries shared by processes and nodes (retrofits, background statistics,
base probes): one builder per key, readers that never see a partial entry.

    path = get_or_create(root, key, build)                    # build(tmp): fill the directory tmp
    path = get_or_create(root, f"{key}.json", build, file=True)  # build(tmp): write the file tmp
    path = get_or_create(root, key, write, compute=train, rank=r, world_size=w)   # a multi-rank trial

`root / key` is the entry. It appears only by a rename of a finished temp (`.<key>+<host>+<pid>+<uuid>.tmp`
in `root`, unique across hosts), so an entry that exists is complete. The build runs while holding
`root/.locks/<key>.lock` (`filelock.FileLock`, flock): a caller that waited for the lock re-checks
and returns the entry another process built, without building. A build that raises leaves no
entry, removes its temp and releases the lock (the next caller builds); a killed builder's lock
goes with its process, and its temp is removed by the next builder of that key (whoever holds the
lock is the key's only writer, so any temp of the key is orphaned).

Multi-rank (world_size > 1, torch.distributed initialised): only rank 0 takes the lock and decides
hit or miss; the decision is broadcast, so every rank does the same. On a miss `compute()` runs on
every rank (it may use collectives, e.g. a DDP training stage), then `build(tmp)` on rank 0 only,
still under the lock; the others wait at a barrier until the entry is published. While another
process holds the lock, rank 0 retries every `poll_s` and broadcasts "wait" each time, so no rank
sits in one collective long enough to hit the process group's timeout.

Across nodes the cache dir must be on a filesystem with working flock (NFSv4, CephFS, Lustre mounted
with `flock`); filelock falls back to a marker-file lock where flock is missing."""
from __future__ import annotations

import os
import re
import shutil
import socket
import uuid
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_WAIT, _HIT, _MISS = "wait", "hit", "miss"


def temp_name(key: str, *, host: str | None = None, pid: int | None = None) -> str:
    """A temp name for `key`, unique across hosts and processes (host, pid and a random uuid)."""
    host = re.sub(r"[^A-Za-z0-9.-]", "_", host if host is not None else socket.gethostname()) or "host"
    pid = os.getpid() if pid is None else pid
    return f".{key}+{host}+{pid}+{uuid.uuid4().hex}.tmp"


def lock_path(root: str | Path, key: str) -> Path:
    return Path(root) / ".locks" / f"{key}.lock"


def get_or_create(root: str | Path, key: str, build: Callable[[Path], None], *, file: bool = False,
                  compute: Callable[[], None] | None = None, rank: int = 0, world_size: int = 1,
                  poll_s: float = 30.0) -> Path:
    """The path of entry `key` under `root`, built first if absent (see the module doc).

    build(tmp): writes the entry at `tmp` — files inside the (existing, empty) directory `tmp`, or,
    with file=True, the single file `tmp`. compute(): optional work before build, run on every
    rank when world_size > 1 (build then runs on rank 0 only)."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(f"cache key must match {_KEY.pattern}, got {key!r}")
    root = Path(root)
    final = root / key
    if world_size > 1:
        return _get_or_create_ranks(root, key, final, build, file, compute, rank, poll_s)
    if final.exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root, key):
        if not final.exists():
            if compute is not None:
                compute()
            _publish(root, key, final, build, file)
    return final


def _lock(root: Path, key: str) -> FileLock:
    p = lock_path(root, key)
    p.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(p))


def _publish(root: Path, key: str, final: Path, build: Callable[[Path], None], file: bool) -> None:
    """Build into a fresh temp and rename it into place. Call with the key's lock held."""
    for stale in root.glob(f".{key}+*.tmp"):  # left by a killed builder: no live writer while we hold the lock
        _remove(stale)
    tmp = root / temp_name(key)
    try:
        if not file:
            tmp.mkdir()
        build(tmp)
        if not (tmp.is_file() if file else tmp.is_dir()):
            raise RuntimeError(f"cache build for {key!r} wrote no {'file' if file else 'directory'} at {tmp}")
        try:
            os.rename(tmp, final)  # atomic; a directory target must not exist
        except OSError:
            if not final.exists():
                raise
            _remove(tmp)  # only if the lock failed to exclude (e.g. no flock across nodes): keep the first
    except BaseException:
        _remove(tmp)
        raise


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _get_or_create_ranks(root: Path, key: str, final: Path, build, file: bool, compute, rank: int,
                         poll_s: float) -> Path:
    import torch.distributed as dist

    lock = None
    try:
        while True:
            state = None
            if rank == 0:
                if final.exists():
                    state = _HIT
                else:
                    if lock is None:
                        root.mkdir(parents=True, exist_ok=True)
                        lock = _lock(root, key)
                    try:
                        lock.acquire(timeout=poll_s)
                        state = _HIT if final.exists() else _MISS
                    except Timeout:
                        state = _WAIT
            msg = [state]
            dist.broadcast_object_list(msg, src=0)  # the same decision on every rank
            state = msg[0]
            if state != _WAIT:
                break
        if state == _HIT:
            return final
        if compute is not None:
            compute()
        if rank == 0:
            _publish(root, key, final, build, file)
            lock.release()
        dist.barrier()  # no rank reads the entry before rank 0 has published it
        return final
    finally:
        if lock is not None and lock.is_locked:
            lock.release()
