"""smf_sweep.cache: one builder per key across real processes, no partial entries, crash recovery,
temp names unique across hosts, and the multi-rank protocol (gloo process groups)."""
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from smf_sweep.cache import get_or_create, lock_path, temp_name

KEY = "0123abcd"
SPAWN = mp.get_context("spawn")


# ---- functions run in spawned processes (module level: picklable) --------------------------------
def _count(log: Path, what: str) -> None:
    with open(log, "a") as f:  # O_APPEND: one line per call, whatever the process
        f.write(f"{what} {os.getpid()}\n")


def _dir_build(log: str, sleep_s: float):
    def build(tmp: Path):
        _count(Path(log), "build")
        (tmp / "a.txt").write_text("A" * 1000)
        time.sleep(sleep_s)  # a reader polling now must not see the entry
        (tmp / "b.txt").write_text("B" * 1000)
    return build


def _worker_dir(root: str, log: str, sleep_s: float, out: str) -> None:
    p = get_or_create(root, KEY, _dir_build(log, sleep_s))
    Path(out).write_text((p / "a.txt").read_text() + (p / "b.txt").read_text())


def _worker_file(root: str, log: str, sleep_s: float) -> None:
    def build(tmp: Path):
        _count(Path(log), "build")
        with open(tmp, "w") as f:
            f.write('{"x": "' + "x" * 5000)
            f.flush()
            time.sleep(sleep_s)
            f.write('"}')
    json.loads(get_or_create(root, f"{KEY}.json", build, file=True).read_text())


def _reader(root: str, key: str, stop_after_s: float, out: str) -> None:
    """Poll the entry; record each observation: complete or not."""
    seen, t0 = [], time.time()
    final = Path(root) / key
    while time.time() - t0 < stop_after_s:
        if final.exists():
            if final.is_dir():
                files = sorted(x.name for x in final.iterdir())
                ok = files == ["a.txt", "b.txt"] and (final / "b.txt").read_text() == "B" * 1000
            else:
                try:
                    ok = json.loads(final.read_text())["x"] == "x" * 5000
                except ValueError:
                    ok = False
            seen.append(ok)
        time.sleep(0.002)
    Path(out).write_text(json.dumps(seen))


def _crashing_worker(root: str, log: str, how: str) -> None:
    def build(tmp: Path):
        _count(Path(log), "build")
        (tmp / "a.txt").write_text("partial")
        if how == "raise":
            raise RuntimeError("builder failed")
        os._exit(3)  # killed: no cleanup, no finally
    try:
        get_or_create(root, KEY, build)
    except RuntimeError:
        pass


def _rank(root: str, log: str, port: int, rank: int, trial: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        def compute():  # every rank of the trial that builds; uses a collective like a training stage
            _count(Path(log), f"compute {trial} {rank}")
            time.sleep(1.0)
            dist.barrier()

        def write(tmp: Path):
            _count(Path(log), f"build {trial} {rank}")
            (tmp / "memory.pt").write_text(trial)

        p = get_or_create(root, KEY, write, compute=compute, rank=rank, world_size=2, poll_s=0.2)
        Path(out).write_text((p / "memory.pt").read_text())
    finally:
        dist.destroy_process_group()


def _run(procs, timeout=120):
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
            raise AssertionError("a process hung")
    return [p.exitcode for p in procs]


def _lines(log: Path, prefix: str) -> list[str]:
    return [x for x in log.read_text().splitlines() if x.startswith(prefix)] if log.exists() else []


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- tests ----------------------------------------------------------------------------------------
def test_concurrent_processes_build_once_and_readers_never_see_partial(tmp_path):
    root, log = tmp_path / "cache", tmp_path / "log"
    outs = [tmp_path / f"out{i}" for i in range(4)]
    readers = [tmp_path / f"seen{i}" for i in range(2)]
    procs = [SPAWN.Process(target=_worker_dir, args=(str(root), str(log), 1.5, str(o))) for o in outs]
    procs += [SPAWN.Process(target=_reader, args=(str(root), KEY, 6.0, str(r))) for r in readers]
    assert _run(procs) == [0] * 6
    assert len(_lines(log, "build")) == 1, log.read_text()
    assert all(o.read_text() == "A" * 1000 + "B" * 1000 for o in outs)
    for r in readers:
        seen = json.loads(r.read_text())
        assert seen and all(seen), "a reader saw a partial entry (or never saw it)"
    assert sorted(x.name for x in root.iterdir()) == [".locks", KEY]  # no temp left


def test_file_entries_build_once_and_are_never_partial(tmp_path):
    root, log = tmp_path / "cache", tmp_path / "log"
    procs = [SPAWN.Process(target=_worker_file, args=(str(root), str(log), 1.0)) for _ in range(3)]
    procs.append(SPAWN.Process(target=_reader, args=(str(root), f"{KEY}.json", 4.0, str(tmp_path / "seen"))))
    assert _run(procs) == [0] * 4
    assert len(_lines(log, "build")) == 1
    seen = json.loads((tmp_path / "seen").read_text())
    assert seen and all(seen)


def test_a_waiter_does_not_recompute(tmp_path):
    root, log = tmp_path / "cache", tmp_path / "log"
    first = SPAWN.Process(target=_worker_dir, args=(str(root), str(log), 2.0, str(tmp_path / "o1")))
    first.start()
    t0 = time.time()
    while not _lines(log, "build"):  # the first process holds the lock and is building
        assert time.time() - t0 < 60
        time.sleep(0.01)
    calls = []
    p = get_or_create(root, KEY, lambda tmp: calls.append(tmp))  # waits for the lock, then finds the entry
    first.join(60)
    assert first.exitcode == 0 and calls == []
    assert (p / "b.txt").read_text() == "B" * 1000


@pytest.mark.parametrize("how", ["raise", "killed"])
def test_a_crashed_builder_leaves_no_entry_and_frees_the_lock(tmp_path, how):
    root, log = tmp_path / "cache", tmp_path / "log"
    assert _run([SPAWN.Process(target=_crashing_worker, args=(str(root), str(log), how))]) == \
        [0 if how == "raise" else 3]
    assert not (root / KEY).exists()
    if how == "raise":
        assert sorted(x.name for x in root.iterdir()) == [".locks"]  # its temp went with it
    else:
        assert [x for x in root.iterdir() if x.name.endswith(".tmp")]  # killed: an orphaned temp stays
    # the lock is free: the next caller (a fresh process) builds, and removes the orphaned temp
    assert _run([SPAWN.Process(target=_worker_dir, args=(str(root), str(log), 0.0, str(tmp_path / "o")))]) == [0]
    assert len(_lines(log, "build")) == 2
    assert (tmp_path / "o").read_text() == "A" * 1000 + "B" * 1000
    assert sorted(x.name for x in root.iterdir()) == [".locks", KEY]


def test_a_build_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="wrote no file"):
        get_or_create(tmp_path, "k.json", lambda tmp: None, file=True)
    assert not (tmp_path / "k.json").exists()
    assert get_or_create(tmp_path, "k.json", lambda tmp: tmp.write_text("{}"), file=True).read_text() == "{}"


def test_temp_names_differ_across_hosts_and_between_calls_with_the_same_pid():
    a = temp_name(KEY, host="node-a", pid=4242)
    b = temp_name(KEY, host="node-b", pid=4242)
    c = temp_name(KEY, host="node-a", pid=4242)
    assert len({a, b, c}) == 3
    assert "node-a" in a and "4242" in a and "node-b" in b
    assert a.startswith(f".{KEY}+") and a.endswith(".tmp")
    assert "/" not in temp_name(KEY, host="we/ird host", pid=1)


@pytest.mark.parametrize("key", ["", "../x", "a/b", ".hidden", "a+b"])
def test_bad_keys_are_refused(tmp_path, key):
    with pytest.raises(ValueError):
        get_or_create(tmp_path, key, lambda tmp: None)


def test_two_multi_rank_trials_one_computes_the_other_loads(tmp_path):
    """Two 2-rank trials (gloo) ask for the same key at once: one trial's ranks compute together,
    its rank 0 writes, the other trial's ranks wait (rank 0 polls the lock) and load it."""
    root, log = tmp_path / "cache", tmp_path / "log"
    procs, outs = [], []
    for trial in ("A", "B"):
        port = _free_port()
        for rank in (0, 1):
            outs.append(tmp_path / f"{trial}{rank}")
            procs.append(SPAWN.Process(target=_rank, args=(str(root), str(log), port, rank, trial, str(outs[-1]))))
    assert _run(procs, timeout=180) == [0] * 4
    builds = _lines(log, "build")
    assert len(builds) == 1 and builds[0].split()[2] == "0", builds  # rank 0 of one trial
    winner = builds[0].split()[1]
    assert sorted(x.split()[1:3] for x in _lines(log, "compute")) == [[winner, "0"], [winner, "1"]]
    assert all(o.read_text() == winner for o in outs)
    assert lock_path(root, KEY).exists()
