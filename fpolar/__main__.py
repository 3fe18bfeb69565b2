"""``python -m fpolar``: the command line lives in ``fpolar.apps.cli``."""

from fpolar.apps.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
