"""The docs' copy of the results table: its links rewritten for the docs' folder."""

from __future__ import annotations

from pathlib import Path

from bench.readme import README_BEGIN_MARK, README_END_MARK, readme_block, update_readme
from bench.report import README_END, README_START


def test_links_are_rewritten_for_the_docs_folder_and_normalised(tmp_path: Path) -> None:
    results = tmp_path / "bench" / "results" / "latest.md"
    results.parent.mkdir(parents=True)
    results.write_text(
        f"# run\n{README_START}\n| a | [why](../README.md#where) |\n"
        f"![chart](latency.png) [web](https://example.org/x) [here](#top)\n{README_END}\n",
        encoding="utf-8",
    )
    docs = tmp_path / "docs" / "performance.md"
    docs.parent.mkdir()
    docs.write_text(f"intro\n{README_BEGIN_MARK}\nold\n{README_END_MARK}\nrest\n", encoding="utf-8")
    block = readme_block(results, docs)
    assert "[why](../bench/README.md#where)" in block
    assert "![chart](../bench/results/latency.png)" in block
    assert "[web](https://example.org/x)" in block
    assert "[here](#top)" in block
    assert update_readme(results, docs) is True
    text = docs.read_text(encoding="utf-8")
    assert text.startswith("intro\n")
    assert text.endswith("rest\n")
    assert "old" not in text
    assert update_readme(results, docs) is False
