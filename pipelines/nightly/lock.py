"""A run lock that two hosts sharing a filesystem can both trust.

Why a file created with ``O_CREAT | O_EXCL``: the create is atomic on local
filesystems and on shared POSIX filesystems (NFSv3+, Lustre, EFS, CephFS,
a Databricks/Fuse mount that honours O_EXCL), costs a millisecond and needs no
Spark session or extra service, so the lock is taken before anything heavy
starts. A Delta-table lock (a MERGE that loses on an optimistic-concurrency
conflict) would also work on object stores, but needs a JVM up to acquire it,
and a row left by a killed holder still needs the same staleness rule; on an
object store point ``nightly.lock_path`` at a shared mount, or replace
:class:`FileLock` by a conditional put (S3 ``If-None-Match: *``, GCS
``ifGenerationMatch=0``) behind the same three methods.

The lock file holds JSON ``{run_id, pid, host, started_at, heartbeat_at}``.
A lock is *stale*, and is taken over, when

* its holder ran on this host and that pid no longer exists (a killed run), or
* its file was not touched for ``stale_after_s`` (a holder on another host
  died; a live holder touches it at every step via :meth:`FileLock.heartbeat`).

Take-over is itself serialised by a short-lived ``<lock>.takeover`` file
created with O_EXCL, so two waiters cannot both remove the stale lock and each
believe they hold the new one.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from esmm.util.files import atomic_write_json
from esmm.util.timeutil import utc_now


class LockHeld(RuntimeError):
    """Another live run holds the lock; ``holder`` is its lock-file content."""

    def __init__(self, path: Path, holder: dict):
        self.path, self.holder = path, holder
        super().__init__(
            f"lock {path} is held by run {holder.get('run_id')} (pid {holder.get('pid')} on "
            f"{holder.get('host')}, started {holder.get('started_at')}, last heartbeat "
            f"{holder.get('heartbeat_at')}); wait for it to finish, or delete the file if you "
            f"are sure that run is dead"
        )


def _now() -> str:
    return utc_now().isoformat(timespec="seconds")


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this host (signal 0 probes without killing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@dataclass
class FileLock:
    """Exclusive lock at ``path``; use as a context manager or acquire()/release()."""

    path: Path
    run_id: str
    stale_after_s: int = 6 * 3600
    took_over: Optional[dict] = None  # the stale holder this run replaced, if any

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._held = False

    # ----------------------------------------------------------------- inspection

    def read_holder(self) -> Optional[dict]:
        """The current lock-file content, or None when the lock is free."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
        except ValueError:
            holder = {"run_id": None, "corrupt": text[:200]}  # a writer died mid-write
        try:
            holder["_mtime"] = self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        return holder

    def is_stale(self, holder: dict) -> bool:
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            if not pid_alive(holder["pid"]):
                return True
        return time.time() - holder.get("_mtime", time.time()) > self.stale_after_s

    # ----------------------------------------------------------------- acquire / release

    def _create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        now = _now()
        body = {
            "run_id": self.run_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": now,
            "heartbeat_at": now,
        }
        with os.fdopen(fd, "w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def acquire(self) -> "FileLock":
        """Take the lock, taking over a stale one; raise :class:`LockHeld` otherwise."""
        if self._create():
            self._held = True
            return self
        holder = self.read_holder()
        if holder is None:  # released between our create and our read: try once more
            if self._create():
                self._held = True
                return self
            holder = self.read_holder() or {}
        if not self.is_stale(holder):
            raise LockHeld(self.path, holder)
        self._take_over(holder)
        return self

    def _take_over(self, seen: dict) -> None:
        guard = self.path.with_name(self.path.name + ".takeover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            # Someone else is taking over right now; a guard older than a minute is debris.
            try:
                if time.time() - guard.stat().st_mtime > 60:
                    guard.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            raise LockHeld(self.path, self.read_holder() or seen) from None
        os.close(fd)
        try:
            current = self.read_holder()
            # Re-check under the guard: the holder we judged stale must still be the one there.
            if current is not None and (current.get("run_id") != seen.get("run_id") or not self.is_stale(current)):
                raise LockHeld(self.path, current)
            self.path.unlink(missing_ok=True)
            if not self._create():
                raise LockHeld(self.path, self.read_holder() or {})
            self.took_over = {k: v for k, v in seen.items() if not k.startswith("_")}
            self._held = True
        finally:
            guard.unlink(missing_ok=True)

    def heartbeat(self) -> None:
        """Mark the holder alive (mtime and ``heartbeat_at``); call between long steps."""
        if not self._held:
            return
        holder = self.read_holder()
        if holder is None or holder.get("run_id") != self.run_id:
            raise RuntimeError(
                f"lock {self.path} was taken from run {self.run_id} by "
                f"{(holder or {}).get('run_id')}: stopping, another run owns the date now"
            )
        holder = {k: v for k, v in holder.items() if not k.startswith("_")}
        holder["heartbeat_at"] = _now()
        atomic_write_json(self.path, holder, default=None)  # readers never see a half-written lock

    def release(self) -> None:
        """Remove the lock if this run still holds it (never someone else's)."""
        if not self._held:
            return
        holder = self.read_holder()
        if holder is not None and holder.get("run_id") == self.run_id:
            self.path.unlink(missing_ok=True)
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
