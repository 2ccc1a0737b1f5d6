"""Regenerate the documentation's performance table from the benchmark's latest results.

docs/performance.md holds, between `<!-- bench:start -->` and
`<!-- bench:end -->`, a copy of the part of `bench/results/latest.md` between its own
`<!-- readme:start -->` and `<!-- readme:end -->` markers (the summary line, the table of
chatlog beside its peers, the chart). Links in it are relative to the results file, so
they are rewritten relative to that file. Everything outside the markers is left alone.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

from bench.report import README_END, README_START

__all__ = ["README_BEGIN_MARK", "README_END_MARK", "readme_block", "update_readme"]

README_BEGIN_MARK = "<!-- bench:start -->"
README_END_MARK = "<!-- bench:end -->"
_LINK = re.compile(r"(\]\()([^)\s]+)(\))")


def readme_block(results: Path, readme: Path) -> str:
    """The results' README part, its relative links rewritten for `readme`'s folder."""
    text = results.read_text(encoding="utf-8")
    try:
        start = text.index(README_START) + len(README_START)
        end = text.index(README_END, start)
    except ValueError:
        raise ValueError(
            f"{results} has no {README_START} ... {README_END} part; run the benchmark again"
        ) from None
    base = os.path.relpath(results.resolve().parent, readme.resolve().parent)

    def relink(match: re.Match[str]) -> str:
        target = match.group(2)
        if re.match(r"^([a-z]+:|/|#)", target):
            return match.group(0)
        # Normalised: a link out of the results' folder reads ../bench/README.md, not
        # ../bench/results/../README.md.
        moved = posixpath.normpath(Path(base, target).as_posix())
        return f"{match.group(1)}{moved}{match.group(3)}"

    return _LINK.sub(relink, text[start:end].strip())


def update_readme(results: Path, readme: Path) -> bool:
    """Replace what is between the README's markers; True if the README changed."""
    text = readme.read_text(encoding="utf-8")
    begin = text.find(README_BEGIN_MARK)
    end = text.find(README_END_MARK)
    if begin < 0 or end < begin:
        raise ValueError(
            f"{readme} has no {README_BEGIN_MARK} ... {README_END_MARK} markers in its "
            f"performance section; add them around the table to regenerate"
        )
    block = readme_block(results, readme)
    new = text[: begin + len(README_BEGIN_MARK)] + "\n" + block + "\n" + text[end:]
    if new == text:
        return False
    readme.write_text(new, encoding="utf-8")
    return True
