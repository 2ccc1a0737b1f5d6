"""Architecture rules that a review could miss: purity of the core, the public surface."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import schemas.errors as errors

NETWORK_LIBRARIES = ("confluent_kafka", "redis", "openai", "faust", "aiokafka")
PURE_MODULES = [
    "schemas",
    "schemas.codec",
    "schemas.events",
    "schemas.ids",
    "schemas.errors",
    "schemas.registry",
    "producers.commands",
    "producers.partitioning",
    "projections",
    "projections.view",
    "projections.keys",
    "projections.encoding",
    "projections.store",
    "projections.context",
    "projections.tokens",
    "processors.projection",
    "processors.dead_letters",
    "processors.summarizers",
    "processors.summary_engine",
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


@pytest.mark.parametrize("package", ["chatlog", "schemas", "producers"])
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
