"""What chatlog is published as: its distribution name on the package index, and its version.

The import name is `chatlog`; the distribution is `chatlog-memory` (the name `chatlog` on the
index belongs to another project). The version is written once, in pyproject.toml, and read
here from the installed package's metadata.
"""

from __future__ import annotations

from functools import cache
from importlib import metadata

__all__ = ["DISTRIBUTION", "installed_version"]

DISTRIBUTION = "chatlog-memory"


@cache
def installed_version() -> str:
    """The installed distribution's version; "0+unknown" for a source tree nobody installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"
