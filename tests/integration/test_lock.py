"""The nightly lock: exclusive, released only by its holder, stale holders taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from pipelines.nightly.lock import FileLock, LockHeld


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid  # reaped: no process has this pid now (pids are not reused this fast)


def test_second_holder_is_refused_until_release(tmp_path):
    path = tmp_path / "ops" / "runs.lock"
    a = FileLock(path, "run-a").acquire()
    body = json.loads(path.read_text())
    assert body["run_id"] == "run-a" and body["pid"] == os.getpid()
    assert body["host"] == socket.gethostname()
    with pytest.raises(LockHeld, match="held by run run-a"):
        FileLock(path, "run-b").acquire()
    a.release()
    assert not path.exists()
    with FileLock(path, "run-b") as b:
        assert b.held and json.loads(path.read_text())["run_id"] == "run-b"
    assert not path.exists()


def test_release_never_removes_someone_elses_lock(tmp_path):
    path = tmp_path / "l.lock"
    a = FileLock(path, "run-a").acquire()
    path.write_text(json.dumps({"run_id": "run-z", "pid": os.getpid(), "host": socket.gethostname()}))
    a.release()
    assert json.loads(path.read_text())["run_id"] == "run-z"


def test_dead_pid_on_this_host_is_taken_over(tmp_path):
    path = tmp_path / "l.lock"
    dead = {
        "run_id": "killed",
        "pid": _dead_pid(),
        "host": socket.gethostname(),
        "started_at": "2026-11-01T00:00:00+00:00",
    }
    path.write_text(json.dumps(dead))
    lock = FileLock(path, "run-b").acquire()
    assert lock.took_over["run_id"] == "killed"
    assert json.loads(path.read_text())["run_id"] == "run-b"
    assert not path.with_name("l.lock.takeover").exists()


def test_other_host_lock_is_stale_only_after_the_heartbeat_timeout(tmp_path):
    path = tmp_path / "l.lock"
    path.write_text(json.dumps({"run_id": "remote", "pid": 1, "host": "another-host"}))
    with pytest.raises(LockHeld, match="remote"):
        FileLock(path, "run-b", stale_after_s=3600).acquire()
    old = time.time() - 7200
    os.utime(path, (old, old))
    lock = FileLock(path, "run-b", stale_after_s=3600).acquire()
    assert lock.took_over["run_id"] == "remote"


def test_heartbeat_refreshes_and_detects_a_stolen_lock(tmp_path):
    path = tmp_path / "l.lock"
    lock = FileLock(path, "run-a", stale_after_s=3600).acquire()
    old = time.time() - 7000
    os.utime(path, (old, old))
    lock.heartbeat()
    assert time.time() - path.stat().st_mtime < 60
    assert json.loads(path.read_text())["run_id"] == "run-a"
    path.write_text(json.dumps({"run_id": "thief", "pid": 1, "host": "x"}))
    with pytest.raises(RuntimeError, match="taken from run run-a by thief"):
        lock.heartbeat()


def test_concurrent_processes_only_one_wins(tmp_path):
    path = tmp_path / "race.lock"
    code = (
        "import sys, time\n"
        "from pipelines.nightly.lock import FileLock, LockHeld\n"
        "try:\n"
        f"    FileLock(__import__('pathlib').Path({str(path)!r}), sys.argv[1]).acquire()\n"
        "    print('WON', flush=True); time.sleep(2)\n"
        "except LockHeld:\n"
        "    print('LOST', flush=True)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    procs = [
        subprocess.Popen([sys.executable, "-c", code, f"p{i}"], stdout=subprocess.PIPE, text=True, env=env)
        for i in range(6)
    ]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(outs) == ["LOST"] * 5 + ["WON"], outs
