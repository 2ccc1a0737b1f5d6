"""Architecture rules that a review could miss: purity of the core, the public surface."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import chatlog.schemas.errors as errors

NETWORK_LIBRARIES = ("confluent_kafka", "redis", "openai", "faust", "aiokafka")
PURE_MODULES = [
    "chatlog",
    "chatlog.schemas",
    "chatlog.schemas.codec",
    "chatlog.schemas.events",
    "chatlog.schemas.ids",
    "chatlog.schemas.errors",
    "chatlog.schemas.registry",
    "chatlog.producers.commands",
    "chatlog.producers.partitioning",
    "chatlog.projections",
    "chatlog.projections.view",
    "chatlog.projections.keys",
    "chatlog.projections.encoding",
    "chatlog.projections.store",
    "chatlog.projections.context",
    "chatlog.projections.tokens",
    "chatlog.processors.projection",
    "chatlog.processors.dead_letters",
    "chatlog.processors.summarizers",
    "chatlog.processors.summary_engine",
]


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_import_no_network_library(module):
    # A fresh interpreter: this test process has imported the adapters already.
    code = (
        f"import sys, {module}; "
        f"print(','.join(m for m in {NETWORK_LIBRARIES!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "", f"{module} pulled in {loaded}"


@pytest.mark.parametrize("package", ["chatlog", "chatlog.schemas", "chatlog.producers"])
def test_public_surface_is_exactly_all(package):
    module = importlib.import_module(package)
    public = {name for name in dir(module) if not name.startswith("_")}
    submodules = {name for name in public if type(getattr(module, name)).__name__ == "module"}
    assert sorted(public - submodules - {"annotations"}) == sorted(module.__all__)
    for name in module.__all__:
        assert getattr(module, name) is not None


def test_every_error_is_a_chatlog_error_and_a_builtin():
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.ChatlogError)
        if cls not in (errors.ChatlogError, errors.PublishError, errors.ReadError):
            builtin_bases = [b for b in cls.__mro__ if b.__module__ == "builtins"]
            assert builtin_bases[0] is not Exception, f"{name} resembles no builtin"


LAYERS = ("schemas", "producers", "projections", "processors")


def test_every_import_names_the_one_root():
    # The layer folders are sub-packages of chatlog (chatlog/<layer> links to <layer>/).
    # Imported bare, a layer would be a second copy of its modules under another name, and
    # an application's own `schemas` module would shadow it.
    root = Path(__file__).resolve().parents[2]
    bare = re.compile(rf"^\s*(?:from|import)\s+(?:{'|'.join(LAYERS)})\b", re.MULTILINE)
    offenders = [
        str(path.relative_to(root))
        for folder in (*LAYERS, "chatlog", "dev", "bench", "tests")
        for path in (root / folder).rglob("*.py")
        if bare.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
    for layer in LAYERS:
        link = root / "chatlog" / layer
        assert link.is_symlink()
        assert link.resolve() == root / layer
