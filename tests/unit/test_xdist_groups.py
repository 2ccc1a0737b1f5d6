"""The suite's own set-up: under `make test`'s workers, a module's tests that share a
module-scoped fixture run on one worker (tests/conftest.py marks them, xdist groups them)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def shared() -> str:
    """A module-scoped fixture: what makes this module's tests one group."""
    return "started once"


def test_a_module_sharing_a_fixture_is_one_group_on_xdists_workers(request, shared):
    config = request.config
    if not (hasattr(config, "workerinput") and config.getvalue("loadgroup")):
        pytest.skip("not on xdist's workers with --dist loadgroup: nothing is grouped")
    assert request.node.get_closest_marker("xdist_group") is not None
    # xdist reads the group from the node id; on pytest 9.2 its suffix is lost
    # (pytest-dev/pytest-xdist#1386): pyproject.toml keeps pytest below it.
    assert "@" in request.node.nodeid, (
        f"pytest {pytest.__version__} with this pytest-xdist does not group tests: install "
        f"the pytest that pyproject.toml's dev extra names (`make venv`)"
    )
    assert shared == "started once"
