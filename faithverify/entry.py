"""The console scripts' entry points: Ctrl-C while the command line is still loading is one line, exit 130."""

from __future__ import annotations

import sys


def faithverify() -> None:
    try:
        from faithverify.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: stopped by Ctrl-C\n")
        sys.exit(130)
    main()


def faithverify_vnnlib() -> None:
    try:
        from faithverify.vnn.solver_cli import main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: stopped by Ctrl-C\n")
        sys.exit(130)
    main()
