"""`python -m experiments mnist-lt ...`: the studies of this checkout, run through vlmkd's public API (vlmkd must be
installed, e.g. `pip install -e .`; the installed library never imports this package)."""

from __future__ import annotations

import sys

from vlmkd.errors import VlmkdError

USAGE = "usage: python -m experiments mnist-lt [--help | OPTIONS]"


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "mnist-lt":
        print(USAGE, file=sys.stderr)
        return 2
    from experiments.study import main as study_main

    try:
        return study_main(argv[1:])
    except VlmkdError as error:
        print(f"python -m experiments mnist-lt: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
