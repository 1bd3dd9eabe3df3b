"""Ending a process entry: run its main, flush, and exit with its code, skipping finalisation.

Why: native thread pools of libraries a command loads (pyarrow and delta-rs for the
registry, torch) can still be alive when CPython finalises. Run without a terminal, as a
scheduler does, ``esmm promote`` finished, printed its result, and then aborted with
"terminate called without an active exception" (exit 134) intermittently. Every table a
command writes is committed before its main returns, so ending the process right after
flushing its output loses nothing. Library functions (``train(config)``) never end the
process: they release what they started (see esmm/training/trainer.py).
"""

from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn


def end_process(main: Callable[[], int]) -> NoReturn:
    """``main()``, then ``os._exit`` with its code: 0..255 as returned, an ``exit(code)``'s code
    (a string code is printed to stderr, exit 1), or 1 with the traceback for anything else."""
    try:
        rc = main()
    except SystemExit as e:  # argparse (--help, usage errors) and explicit exits
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - documented: 1 for anything else, with the traceback
        import traceback

        traceback.print_exc()
        rc = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
