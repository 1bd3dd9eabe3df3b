"""A user's own script that calls ``train(cfg)`` under ``torchrun --nproc_per_node 2``, run as a
scheduler runs it (stdin closed): it exits 0 run after run, leaves no gloo thread alive after
``train()`` returns (the cause of the intermittent SIGABRT at exit, issue 24), and exits
non-zero with its error when training raises."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers.examples_data import TINY_OVERRIDES, write_examples_rs

from esmm.training.distributed import release_group_defaults

pytestmark = pytest.mark.integration  # torchrun with two ranks, several times

REPO = Path(__file__).resolve().parents[2]
DATES = ["2026-11-01", "2026-11-02"]

# ``--init-first``: the script creates the process group itself before it imports esmm, so
# torch.distributed.nn.functional is imported after a group exists (the late-import case).
USER_SCRIPT = textwrap.dedent("""
    import os, sys
    if "--init-first" in sys.argv:
        import torch.distributed as dist
        dist.init_process_group("gloo")
    from esmm.config.loader import load_config
    from esmm.training.trainer import train

    r = train(load_config(overrides=[a for a in sys.argv[1:] if a != "--init-first"]))
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            names.append(open(f"/proc/self/task/{tid}/comm").read().strip())
        except OSError:
            pass  # the thread ended while we listed
    alive = sorted(n for n in names if "gloo" in n)
    if alive:
        sys.exit(f"rank {r.rank}: gloo threads alive after train() returned: {alive}")
    print(f"rank {r.rank} done: {r.steps} steps", flush=True)
""")


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """2 days x 400 rows of the examples contract, written by delta-rs (no JVM needed)."""
    root = tmp_path_factory.mktemp("exit_lake")
    write_examples_rs(str(root / "curated" / "examples"), DATES, 400)
    return root


def run_user_script(lake: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    script = tmp / "user_train.py"
    script.write_text(USER_SCRIPT)
    sets = [
        f"lakehouse.root={lake}",
        *TINY_OVERRIDES,
        f"train.train_start={DATES[0]}",
        f"train.train_end={DATES[-1]}",
        f"train.checkpoint_dir={tmp / 'ck'}",
        "train.resume=false",
        "train.register=false",
        "train.torch_threads=1",
        f"lakehouse.tables.models={tmp / 'models'}",
        "tracking.enabled=false",
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        *sets,
        *extra,
    ]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
    )
    return subprocess.run(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)


def test_user_script_under_torchrun_exits_0_five_times_in_a_row(lake, tmp_path):
    for i in range(5):
        extra = ("--init-first",) if i % 2 else ()
        p = run_user_script(lake, tmp_path, *extra)
        out = p.stdout + p.stderr
        assert p.returncode == 0, f"run {i + 1} {extra}: exit {p.returncode}\n{out[-4000:]}"
        assert "rank 0 done" in out and "rank 1 done" in out, out[-4000:]
        assert "terminate called" not in out


def test_user_script_whose_training_raises_exits_non_zero_with_the_error(lake, tmp_path):
    p = run_user_script(lake, tmp_path, "train.fail_after_steps=1")
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert "train.fail_after_steps=1: simulated crash" in out, out[-4000:]
    assert "done:" not in out


def test_release_group_defaults_drops_only_the_destroyed_group():
    import torch.distributed.nn.functional as fn

    class Group:  # stands for a destroyed ProcessGroup that a late import captured
        pass

    group, saved = Group(), (fn.broadcast.__defaults__, fn.all_reduce.__defaults__)
    try:
        fn.broadcast.__defaults__ = (group,)
        fn.all_reduce.__defaults__ = (fn.ReduceOp.SUM, group)
        assert release_group_defaults(group) == 2
        assert fn.broadcast.__defaults__ == (None,)
        assert fn.all_reduce.__defaults__ == (fn.ReduceOp.SUM, None)
        assert release_group_defaults(group) == 0
    finally:
        fn.broadcast.__defaults__, fn.all_reduce.__defaults__ = saved
