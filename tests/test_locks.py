"""Stale Snakemake locks: removed only when their recorded owner is gone from this host, and only
the lock files that owner wrote."""

import json
import os
import socket
import subprocess
import sys

from opgrpo_stages.execution import locks


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _owner(pid, names):
    d = locks._LOCKS
    (d / f"opgrpo-owner.{socket.gethostname()}.{pid}.json").write_text(
        json.dumps({name: locks._identity(d / name) for name in names}))


def test_stale_locks_of_a_dead_owner_are_removed_live_ones_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = locks._LOCKS
    d.mkdir(parents=True)
    for name in ("0.input.lock", "0.output.lock", "1.input.lock", "2.input.lock"):
        (d / name).write_text("runs/x\n")
    _owner(_dead_pid(), ["0.input.lock", "0.output.lock"])
    _owner(os.getppid(), ["1.input.lock"])  # a live process
    dead2 = _dead_pid()
    _owner(dead2, ["2.input.lock"])
    (d / "2.input.lock").unlink()  # that owner's lock is gone and a live run reused the name
    (d / "2.input.lock").write_text("runs/y\n")
    os.utime(d / "2.input.lock", ns=(1, 1))

    assert sorted(locks.clear_stale_locks()) == ["0.input.lock", "0.output.lock"]
    assert sorted(p.name for p in d.glob("*.lock")) == ["1.input.lock", "2.input.lock"]
    assert len(list(d.glob("opgrpo-owner.*.json"))) == 1  # only the live owner's record stays


def test_record_claims_only_unclaimed_locks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = locks._LOCKS
    d.mkdir(parents=True)
    (d / "0.input.lock").write_text("a\n")
    _owner(os.getppid(), ["0.input.lock"])
    (d / "1.input.lock").write_text("b\n")
    locks.record_lock_owner()
    mine = json.loads(locks._owner_file().read_text())
    assert list(mine) == ["1.input.lock"]
    locks.release_lock_owner()
    assert not locks._owner_file().exists()
