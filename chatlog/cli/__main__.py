"""`python -m chatlog.cli`: the `chatlog` command, run as a module."""

from __future__ import annotations

import sys

from chatlog.cli import main

if __name__ == "__main__":
    sys.exit(main())
