"""Programs from Debian's packages, installed with apt-get the first time they are needed.

A machine that has never run the project lacks some programs the local tools run:
`redis-server` for the stack, `chromium` and `chromedriver` for the browser test. When
this process is root, `ensure_programs` installs their packages with apt-get (the same
commands a developer would type); otherwise it says which command to run. Nothing is
installed when every program is found already.

Some programs need a library that this Debian release no longer ships: Redis Stack's
server links OpenSSL 1.1, which bookworm replaced by 3.0. `fetch_deb` downloads such a
package from the archive that still serves it (bullseye-security) with `apt-get
download` on a private source list and private apt state dirs, and unpacks it into a
folder of ours with `dpkg-deb -x`: nothing is installed, and no system file changes.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from dev.services.state import ServiceError

__all__ = ["SEARCH_DIRS", "ensure_programs", "fetch_deb", "find_program", "install_command"]

log = logging.getLogger(__name__)

SEARCH_DIRS = ("/usr/bin", "/usr/sbin", "/usr/local/bin")
"""Where a program is looked for after PATH: sbin dirs are not on every user's PATH."""

_APT_TIMEOUT_S = 600.0


def find_program(name: str) -> str | None:
    """The path of program `name` on PATH or in `SEARCH_DIRS`, or None."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SEARCH_DIRS))


def install_command(packages: Sequence[str]) -> str:
    """The shell command that installs `packages`, to quote in an error."""
    return "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y " + " ".join(
        packages
    )


def ensure_programs(programs: Sequence[str], *, packages: Sequence[str], service: str) -> list[str]:
    """The paths of `programs`, installing `packages` with apt-get if any is missing.

    `service` names what needs them, in the `ServiceError` raised when they are missing
    and this process may not install them (not root), or when the install fails.
    """
    found = [find_program(name) for name in programs]
    if all(found):
        return [path for path in found if path is not None]
    missing = [name for name, path in zip(programs, found, strict=True) if path is None]
    command = install_command(packages)
    if os.geteuid() != 0:
        raise ServiceError(
            f"{', '.join(missing)} is not installed; install it with `sudo sh -c '{command}'`",
            service=service,
        )
    started = time.monotonic()
    log.info("installing %s with apt-get (first run only)…", " ".join(packages))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _apt(["apt-get", "update"], env=env, command=command, service=service)
    _apt(
        ["apt-get", "install", "-y", "--no-install-recommends", *packages],
        env=env,
        command=command,
        service=service,
    )
    paths = [find_program(name) for name in programs]
    absent = [name for name, path in zip(programs, paths, strict=True) if path is None]
    if absent:
        raise ServiceError(
            f"apt-get installed {' '.join(packages)} but {', '.join(absent)} was not found "
            f"in PATH or {', '.join(SEARCH_DIRS)}; run `{command}` by hand",
            service=service,
        )
    log.info("installed %s in %.1f s", " ".join(packages), time.monotonic() - started)
    return [path for path in paths if path is not None]


def _apt(
    argv: list[str],
    *,
    env: dict[str, str],
    command: str,
    service: str,
    cwd: Path | None = None,
) -> None:
    try:
        result = subprocess.run(  # noqa: S603 - fixed argv
            argv,
            cwd=cwd,
            capture_output=True,
            text=True,
            env=env,
            timeout=_APT_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(
            f"`{' '.join(argv)}` did not finish within {_APT_TIMEOUT_S:.0f} s; "
            f"run `{command}` by hand",
            service=service,
        ) from exc
    if result.returncode != 0:
        output = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise ServiceError(
            f"`{' '.join(argv)}` failed (exit {result.returncode}); run "
            f"`{command}` by hand to see why:\n{output}",
            service=service,
        )


def fetch_deb(package: str, *, source: str, into: Path, service: str) -> None:
    """Download `package` from the apt `source` line and unpack its files under `into`.

    apt reads only the private source list and writes only private state (lists, cache)
    in a temporary dir, so the system's apt configuration and its dpkg database are left
    as they were. `source` names its keyring (``deb [signed-by=...] URI SUITE main``), so
    the archive's signature is checked as usual. Runs as any user: nothing is installed.
    """
    started = time.monotonic()
    log.info("fetching %s from %s (first run only)…", package, source.split()[-3])
    with tempfile.TemporaryDirectory(prefix="chatlog-apt-") as scratch:
        work = Path(scratch)
        (work / "sources.list").write_text(source + "\n", encoding="utf-8")
        for folder in ("parts", "prefs", "lists/partial", "cache/archives/partial"):
            (work / folder).mkdir(parents=True)
        options = [
            f"-oDir::Etc::SourceList={work / 'sources.list'}",
            f"-oDir::Etc::SourceParts={work / 'parts'}",
            f"-oDir::Etc::PreferencesParts={work / 'prefs'}",
            f"-oDir::State::Lists={work / 'lists'}",
            f"-oDir::Cache={work / 'cache'}",
            # Every dir is ours: no system lock guards them, and apt's sandbox user (_apt)
            # may not write into a root's temporary dir.
            "-oDebug::NoLocking=1",
            *(["-oAPT::Sandbox::User=root"] if os.geteuid() == 0 else []),
        ]
        fix = f"apt-get download {package}` from `{source}"
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _apt(["apt-get", *options, "update"], env=env, command=fix, service=service)
        _apt(
            ["apt-get", *options, "download", package],
            env=env,
            command=fix,
            service=service,
            cwd=work,
        )
        (deb,) = work.glob(f"{package}_*.deb")
        into.mkdir(parents=True, exist_ok=True)
        _apt(["dpkg-deb", "-x", str(deb), str(into)], env=env, command=fix, service=service)
    log.info("unpacked %s into %s in %.1f s", package, into, time.monotonic() - started)
