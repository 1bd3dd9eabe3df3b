"""Faults at the jobs' edges: the label or scoring driver killed mid-write; a corrupt Parquet
file or a truncated Delta log entry in a raw table; a read-only or full lakehouse.

Each fault must end the job with its documented exit code (jobs/cli.py) and a message
naming the table and file, with no traceback; the output tables must stay at their
previous version (nothing partial), and once the fault is gone a re-run must give the
same tables as an uninterrupted run (the ``reference`` fixture).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.faults_data import DAYS, labels_cmd, save_champion, score_cmd, tables, without_versions, write_raw_world

from jobs.cli import EXIT_INPUT_UNREADABLE, EXIT_WRITE_FAILED, main

pytestmark = pytest.mark.integration  # whole jobs on real tables
D1, D2 = DAYS


@pytest.fixture(scope="module")
def raw(spark, tmp_path_factory):
    """The raw world, written once and only read by the tests ({source: path})."""
    return write_raw_world(spark, tmp_path_factory.mktemp("raw"))


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reference(spark, raw, tmp_path_factory):
    """The tables of an uninterrupted run on a clean lakehouse: labels of D1, then of D2."""
    root = tmp_path_factory.mktemp("reference")
    for d in DAYS:
        assert main(labels_cmd(root, raw, d)) == 0
    t = tables(spark, root)
    assert t["labels"] and t["quarantine"]  # the world has labels and one orphan click
    return without_versions(t)


@pytest.fixture(scope="module")
def scored_reference(spark, raw, reference, tmp_path_factory):
    """``reference`` plus serving/scores of D1 and D2 by the champion of :func:`save_champion`."""
    from esmm.config.loader import load_config

    root = tmp_path_factory.mktemp("scored-reference")
    save_champion(load_config(overrides=[f"lakehouse.root={root}"]))
    for d in DAYS:
        assert main(score_cmd(root, raw, d)) == 0
    t = without_versions(tables(spark, root))
    assert t["scores"] and {r[0] for r in t["scores"]} == {r[0] for r in reference["labels"]}
    return t["scores"]


# --------------------------------------------------------------------------- driver killed mid-write

# One local core and one row per file: the killed write lasts seconds, not milliseconds.
SLOW_WRITE = [
    "spark.master=local[1]",
    "spark.conf={spark.sql.files.maxRecordsPerFile: '1', spark.sql.session.timeZone: UTC}",
]


def data_files(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*.parquet")}


def kill_while_writing(args: list[str], table: Path, log: Path, timeout: float = 900) -> set[str]:
    """Run ``python -m jobs.cli ARGS`` as a scheduler would (stdin closed, own process group)
    and SIGKILL the whole group (Python driver and its JVM) as soon as a new data file of
    ``table`` appears. Returns the new files seen; fails if the job ended first."""
    before = data_files(table)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    with open(log, "w") as out:
        p = subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + timeout
        try:
            while p.poll() is None and time.time() < deadline:
                new = data_files(table) - before
                if new:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
                    return new
                time.sleep(0.01)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    pytest.fail(f"the job ended (exit {p.returncode}) before writing a file of {table}:\n" + log.read_text()[-3000:])


def killed_mid_write_then_rerun(spark, root: Path, cmd, table: str, log: Path) -> dict:
    """Run ``cmd(D1)``, kill ``cmd(D2)`` while it writes ``table``, check that readers still
    see the D1 version (the killed write's files exist, no commit names them), re-run D2;
    the tables after the re-run, without their versions."""
    assert main(cmd(D1)) == 0
    before = tables(spark, root)
    orphans = kill_while_writing(cmd(D2, *SLOW_WRITE), root / table, log)
    after = tables(spark, root)
    assert all(f"dt={D2}" in f for f in orphans)
    name = Path(table).name
    assert (after[name], after[f"{name}_version"]) == (before[name], before[f"{name}_version"])
    assert main(cmd(D2)) == 0
    return without_versions(tables(spark, root))


@pytest.mark.slow
def test_label_driver_killed_mid_write_keeps_the_previous_version_and_a_rerun_equals_a_clean_run(
    spark, raw, reference, tmp_path
):
    root = tmp_path / "lake"
    got = killed_mid_write_then_rerun(
        spark, root, lambda d, *x: labels_cmd(root, raw, d, *x), "curated/labels", tmp_path / "killed.log"
    )
    assert got == {**reference, "scores": None}


@pytest.mark.slow
def test_score_driver_killed_mid_write_keeps_the_previous_version_and_a_rerun_equals_a_clean_run(
    spark, raw, scored_reference, tmp_path
):
    from esmm.config.loader import load_config

    root = tmp_path / "lake"
    save_champion(load_config(overrides=[f"lakehouse.root={root}"]))
    got = killed_mid_write_then_rerun(
        spark, root, lambda d, *x: score_cmd(root, raw, d, *x), "serving/scores", tmp_path / "killed.log"
    )
    assert got["scores"] == scored_reference


def copy_raw(raw: dict[str, str], to: Path) -> dict[str, str]:
    out = {}
    for s, p in raw.items():
        out[s] = str(to / s)
        shutil.copytree(p, out[s])
    return out


def break_file(path: str, how: str) -> None:
    """``footer``: garbage where the Parquet footer is (its name appears nowhere in Spark's
    error); ``truncated``: the first half only. The Hadoop checksum file goes too, as for a
    file another producer wrote."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2] + (b"\x00garbage" * 16 + data[-8:] if how == "footer" else b""))
    crc = Path(path).parent / f".{Path(path).name}.crc"
    crc.unlink(missing_ok=True)


def labels_fail_on_broken_raw(spark, raw, bad_raw, root: Path, capfd) -> str:
    """Label D1 from the intact ``raw``, then D2 from ``bad_raw``: that run must exit
    EXIT_INPUT_UNREADABLE without a traceback and leave every table as D1 left it; its stderr."""
    assert main(labels_cmd(root, raw, D1)) == 0  # a version to keep, from the intact copy
    before = tables(spark, root)
    capfd.readouterr()
    assert main(labels_cmd(root, bad_raw, D2)) == EXIT_INPUT_UNREADABLE
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    assert tables(spark, root) == before  # D1 as it was, nothing of D2
    return err


@pytest.mark.parametrize("source,how", [("clicks", "footer"), ("impressions", "truncated")])
def test_a_corrupt_raw_parquet_file_is_named_and_nothing_is_written(spark, raw, tmp_path, capfd, source, how):
    bad_raw = copy_raw(raw, tmp_path / "raw")
    victim = sorted(glob.glob(f"{bad_raw[source]}/dt={D2}/*.parquet"))[0]
    break_file(victim, how)
    err = labels_fail_on_broken_raw(spark, raw, bad_raw, tmp_path / "lake", capfd)
    assert f"raw {source} table {bad_raw[source]}: file " in err and Path(victim).name in err, err[-3000:]


def test_a_truncated_delta_log_entry_of_a_raw_table_is_named(spark, raw, tmp_path, capfd):
    bad_raw = copy_raw(raw, tmp_path / "raw")
    log = Path(bad_raw["conversions"]) / "_delta_log"
    entry = sorted(log.glob("*.json"))[-1]
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size * 3 // 5])  # a writer died mid-file
    for crc in log.glob("*.crc"):
        crc.unlink()  # the version checksum would not match either
    err = labels_fail_on_broken_raw(spark, raw, bad_raw, tmp_path / "lake", capfd)
    assert f"raw conversions table {bad_raw['conversions']}: Delta log entry {entry} is not valid JSON" in err, err[
        -3000:
    ]


# --------------------------------------------------------------------------- unwritable lakehouse


def can_mount() -> bool:
    """Root with mount rights (a privileged container, a CI runner as root)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    probe = Path(f"/tmp/esmm-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        ok = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True
            ).returncode
            == 0
        )
        if ok:
            subprocess.run(["umount", str(probe)], check=True)
        return ok
    finally:
        probe.rmdir()


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def make_read_only(path: Path) -> None:
    """Read-only for this process. Root ignores permission bits (os.geteuid() == 0), so as
    root the folder (a tmpfs mount) is remounted read-only instead."""
    if os.geteuid() == 0:
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        return
    for d, _, files in os.walk(path):
        for f in files:
            os.chmod(os.path.join(d, f), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.chmod(d, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


def make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["mount", "-o", "remount,rw", str(path)], check=True)
        return
    for d, _, files in os.walk(path):
        os.chmod(d, stat.S_IRWXU)
        for f in files:
            os.chmod(os.path.join(d, f), stat.S_IRUSR | stat.S_IWUSR)


@contextlib.contextmanager
def curated_folder(root: Path, size: str = "64m"):
    """``root/curated``: a tmpfs of ``size`` as root (for remounting read-only or filling it),
    else a plain folder (permission bits work)."""
    if os.geteuid() == 0:
        if not can_mount():
            pytest.skip(
                "running as root without mount rights: root ignores permission bits, and "
                "neither a read-only nor a full file system can be made here"
            )
        with tmpfs(root / "curated", size) as p:
            yield p
    else:
        (root / "curated").mkdir(parents=True)
        try:
            yield root / "curated"
        finally:
            make_writable(root / "curated")


def fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` until it reports ENOSPC; returns the filler file."""
    filler = folder / "filler.bin"
    block = b"\0" * (1 << 16)
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(block)
                f.flush()
        except OSError:
            pass
    return filler


def test_a_read_only_lakehouse_fails_clearly_and_keeps_the_previous_version(spark, raw, reference, tmp_path, capfd):
    root = tmp_path / "lake"
    with curated_folder(root) as curated:
        assert main(labels_cmd(root, raw, D1)) == 0
        before = tables(spark, root)
        make_read_only(curated)
        capfd.readouterr()
        assert main(labels_cmd(root, raw, D2)) == EXIT_WRITE_FAILED
        err = capfd.readouterr().err
        assert f"cannot write table {root / 'curated'}" in err and "nothing was committed" in err, err[-3000:]
        assert "Traceback" not in err
        assert tables(spark, root) == before
        make_writable(curated)
        assert main(labels_cmd(root, raw, D2)) == 0
        assert without_versions(tables(spark, root)) == reference


@pytest.mark.skipif(os.geteuid() != 0, reason="a full file system needs a small tmpfs, which needs root")
def test_a_full_disk_fails_clearly_and_keeps_the_previous_version(spark, raw, reference, tmp_path, capfd):
    root = tmp_path / "lake"
    with curated_folder(root, size="16m") as curated:
        assert main(labels_cmd(root, raw, D1)) == 0
        before = tables(spark, root)
        filler = fill(curated)
        capfd.readouterr()
        assert main(labels_cmd(root, raw, D2)) == EXIT_WRITE_FAILED
        err = capfd.readouterr().err
        assert f"cannot write table {root / 'curated'}" in err and "No space left on device" in err, err[-3000:]
        assert "Traceback" not in err
        assert tables(spark, root) == before
        filler.unlink()
        assert main(labels_cmd(root, raw, D2)) == 0
        assert without_versions(tables(spark, root)) == reference
