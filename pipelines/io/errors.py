"""Storage faults at the job edges, as errors that name the table and file.

A corrupt Parquet file, a truncated Delta log entry, a read-only or full disk
surface from Spark as a ``Py4JJavaError`` whose text is a JVM stack trace, often
without the file's name (a Parquet footer that does not parse is reported as
"Required field 'version' was not found", nothing else). The jobs translate
them here, at the edge where they read or write, into:

* :class:`TableReadError`: an input table (or one of its files, or its Delta
  log) cannot be read. Fix or restore the named file, then re-run.
* :class:`TableWriteError`: an output table cannot be written (read-only path,
  disk full, a file where a folder should be). Delta commits nothing in that
  case, so the table stays at its previous version.

``esmm`` exits with :data:`jobs.cli.EXIT_INPUT_UNREADABLE` or
:data:`jobs.cli.EXIT_WRITE_FAILED` for them; the nightly records the message
as the failed step's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from typing import Callable, Iterator, Optional

# Exception text that means "the storage refused the write" (POSIX, Hadoop, object stores).
_WRITE_FAULTS = (
    "No space left on device",
    "Read-only file system",
    "Permission denied",
    "AccessDenied",
    "Mkdirs failed",
    "Not a directory",
    "ParentNotDirectory",
    "Disk quota exceeded",
)
# Exception text of a data file that does not decode (worth checking the footers for).
_FILE_FAULT = re.compile(r"(?i)parquet|thrift|checksum|EOFException|magic number|BlockMissing")
_CAUSE = re.compile(r"(?:^|Caused by: |: )((?:[a-z_$][\w$]*\.)+[A-Z][\w$]*(?:Exception|Error): [^\n]{1,300})")


class TableReadError(RuntimeError):
    """An input table, one of its data files or its Delta log cannot be read."""

    def __init__(self, table: str, path: str, message: str, file: Optional[str] = None):
        self.table, self.path, self.file = table, path, file
        super().__init__(message)


class TableWriteError(RuntimeError):
    """An output table cannot be written; nothing was committed to it."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(message)


def is_spark_failure(e: BaseException) -> bool:
    """A failure raised through the JVM (py4j) or by PySpark's error classes."""
    mod = type(e).__module__ or ""
    return mod.startswith("py4j") or mod.startswith("pyspark")


def root_cause(e: BaseException) -> str:
    """The innermost ``pkg.SomeException: message`` line of a JVM failure (else ``str(e)``'s first line)."""
    text = str(e)
    found = _CAUSE.findall(text)
    if found:
        return found[-1].strip()
    return (text.strip().splitlines() or [type(e).__name__])[0][:300]


def _local(path: str) -> Optional[str]:
    """``path`` as a local file-system path, or None for an object store / HDFS URI."""
    if path.startswith("file:"):
        return re.sub(r"^file:(//)?", "", path)
    return None if "://" in path else path


def unreadable_log_entries(path: str) -> list[str]:
    """The ``_delta_log`` commit files of the table at ``path`` holding a line that is not
    JSON (a truncated or partly overwritten commit). Local tables only; [] elsewhere."""
    local = _local(path)
    log = os.path.join(local, "_delta_log") if local else None
    if not log or not os.path.isdir(log):
        return []
    bad = []
    for name in sorted(os.listdir(log)):
        if not re.fullmatch(r"\d{20}\.json", name):
            continue
        with open(os.path.join(log, name), encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    json.loads(line)
                except ValueError:
                    bad.append(os.path.join(log, name))
                    break
    return bad


def unreadable_data_file(files: list[str]) -> Optional[str]:
    """The first of ``files`` (Parquet) whose footer does not parse, read with pyarrow
    (no JVM; any file system pyarrow reaches); None when every footer reads."""
    import pyarrow.parquet as pq
    from pyarrow import fs as pafs

    for f in files:
        try:
            filesystem, p = pafs.FileSystem.from_uri(f if "://" in f else "file://" + _local(f))
            with filesystem.open_input_file(p) as h:
                pq.ParquetFile(h).metadata  # noqa: B018 - reading the footer is the check
        except Exception:  # noqa: BLE001 - any failure to parse it names this file
            return f
    return None


def _named_file(text: str, path: str) -> Optional[str]:
    """A file under ``path`` that a JVM message names (``file:/...`` or the bare path)."""
    local = _local(path) or path
    m = re.search(r"(?:file:)?" + re.escape(local.rstrip("/")) + r"/[^\s,;'\"\]\)]+", text)
    return m.group(0) if m else None


@contextlib.contextmanager
def _translating(translate: Callable[[BaseException], Optional[Exception]]) -> Iterator[None]:
    """Raise ``translate(e)`` for a Spark failure ``e`` inside the block when it returns an
    error; anything else (ours already, not from Spark, or ``None`` from ``translate``)
    passes through unchanged."""
    try:
        yield
    except (TableReadError, TableWriteError):
        raise
    except Exception as e:
        mapped = translate(e) if is_spark_failure(e) else None
        if mapped is None:
            raise
        raise mapped from e


def reading(tables: dict[str, tuple[str, Callable[[], list[str]]]]) -> contextlib.AbstractContextManager:
    """Translate a Spark failure inside the block that comes from reading one of ``tables``
    (``{name: (path, a function listing its data files)}``) into :class:`TableReadError`.

    The file is named from the JVM message when it names one; otherwise, when the message
    is about a file that does not decode, the footers of the table's files are checked one
    by one (only after such a failure; no data is read).
    Failures that are not about an input (a write fault, a bug) pass through unchanged.
    """

    def translate(e: BaseException) -> Optional[Exception]:
        text = str(e)
        if any(s in text for s in _WRITE_FAULTS) and not any(_named_file(text, p) for p, _ in tables.values()):
            return None
        for name, (path, list_files) in tables.items():
            file = _named_file(text, path)
            if file is None and _FILE_FAULT.search(text):
                try:
                    file = unreadable_data_file(list_files())
                except Exception:  # noqa: BLE001 - diagnosis is best effort; the cause is still named
                    file = None
            if file is not None:
                return TableReadError(
                    name,
                    path,
                    f"{name} table {path}: file {file} cannot be read ({root_cause(e)}). "
                    f"Restore or remove that file (a Delta table: restore an earlier version or "
                    f"re-land the partition), then re-run",
                    file,
                )
        return None

    return _translating(translate)


def reading_log(name: str, path: str) -> contextlib.AbstractContextManager:
    """Translate a failure to load the Delta table at ``path`` (its log) into
    :class:`TableReadError` naming the commit file that does not parse, when one does not."""

    def translate(e: BaseException) -> Exception:
        bad = unreadable_log_entries(path)
        where = (
            f"Delta log entry {bad[0]} is not valid JSON (truncated or overwritten)"
            if bad
            else f"its Delta log {path.rstrip('/')}/_delta_log cannot be read"
        )
        return TableReadError(
            name,
            path,
            f"{name} table {path}: {where} ({root_cause(e)}). Restore that "
            f"commit file from a backup or have its producer rewrite it; do not "
            f"delete it, the table's later versions depend on it",
            bad[0] if bad else None,
        )

    return _translating(translate)


def writing(path: str) -> contextlib.AbstractContextManager:
    """Translate a storage fault while writing the table at ``path`` into :class:`TableWriteError`.

    Other failures (a corrupt input read while the plan runs, a bug) pass through.
    """

    def translate(e: BaseException) -> Optional[Exception]:
        if not any(s in str(e) for s in _WRITE_FAULTS):
            return None
        return TableWriteError(
            path,
            f"cannot write table {path} ({root_cause(e)}); nothing was committed, "
            f"the table is at its previous version. Make the path writable or "
            f"free space, then re-run",
        )

    return _translating(translate)
