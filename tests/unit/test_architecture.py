"""Architecture rules that a review could miss: purity of the core, the public surface."""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import chatlog.schemas.errors as errors

NETWORK_LIBRARIES = ("confluent_kafka", "redis", "redisvl", "openai", "faust", "aiokafka")
PURE_MODULES = [
    "chatlog",
    "chatlog.schemas",
    "chatlog.schemas.codec",
    "chatlog.schemas.typed",
    "chatlog.schemas.events",
    "chatlog.schemas.ids",
    "chatlog.schemas.errors",
    "chatlog.schemas.registry",
    "chatlog.schemas.pii",
    "chatlog.schemas.redaction",
    "chatlog.schemas.placeholders",
    "chatlog.schemas.secrets",
    "chatlog.schemas.transport",
    "chatlog.logs",
    "chatlog.producers.commands",
    "chatlog.producers.partitioning",
    "chatlog.projections",
    "chatlog.projections.view",
    "chatlog.projections.access",
    "chatlog.projections.checkpoints",
    "chatlog.projections.tasks",
    "chatlog.projections.keys",
    "chatlog.projections.epochs",
    "chatlog.projections.recall",
    "chatlog.projections.encoding",
    "chatlog.projections.store",
    "chatlog.projections.context",
    "chatlog.projections.tokens",
    "chatlog.processors.projection",
    "chatlog.processors.measures",
    "chatlog.processors.projector_stats",
    "chatlog.processors.projector_coalescing",
    "chatlog.processors.dead_letters",
    "chatlog.processors.summarizers",
    "chatlog.processors.resilience",
    "chatlog.processors.embeddings",
    "chatlog.processors.recall_indexing",
    "chatlog.processors.replay_recall",
    "chatlog.processors.embedder_stats",
    "chatlog.processors.extractive",
    "chatlog.processors.summary_engine",
    "chatlog.processors.commits",
    "chatlog.processors.erasure",
    "chatlog.schemas.audit",
    "chatlog.processors.audit",
    "chatlog.processors.export",
    "chatlog.gateway",
    "chatlog.gateway.tokens",
    "chatlog.gateway.http_errors",
    "chatlog.gateway.principals",
    "chatlog.gateway.api_keys",
    "chatlog.schemas.limits",
    "chatlog.gateway.bots",
    "chatlog.gateway.live_events",
    "chatlog.gateway.request_stats",
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


# The nodes of the tree that group errors by what went wrong; only leaves are raised,
# so only they need to resemble a builtin.
ERROR_GROUPS = {
    "ChatlogError",
    "Refused",
    "LimitExceeded",
    "Unavailable",
    "OutcomeUnknown",
    "Corrupt",
}


def _errors_defined_in_chatlog() -> dict[str, type[BaseException]]:
    # Every module, extras included (the dev install has them all), so an error class
    # defined anywhere in the package is seen, not only those imported by chatlog itself.
    package = importlib.import_module("chatlog")
    for info in pkgutil.walk_packages(package.__path__, "chatlog."):
        importlib.import_module(info.name)
    found: dict[str, type[BaseException]] = {}
    for name, module in list(sys.modules.items()):
        if name != "chatlog" and not name.startswith("chatlog."):
            continue
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__.split(".")[0] == "chatlog"
            ):
                found[value.__qualname__] = value
    return found


def _names_in_the_drawn_tree() -> set[str]:
    doc = errors.__doc__ or ""
    return set(re.findall(r"(?:[├└]── |^ {4})(\w+)", doc, re.MULTILINE))


def test_every_error_in_the_package_is_in_the_documented_tree():
    found = _errors_defined_in_chatlog()
    assert {"ChatlogError", "DataLoss", "Interrupted", "SummarizerError"} <= set(found)
    drawn = _names_in_the_drawn_tree()
    for name, cls in found.items():
        assert cls.__module__ == errors.__name__, f"{name} is defined outside the error module"
        assert name in errors.__all__, f"{name} is not exported by the error module"
        assert issubclass(cls, errors.ChatlogError), f"{name} is not a ChatlogError"
        assert name in drawn, f"{name} is missing from the tree in the error module's docstring"
        if name not in ERROR_GROUPS:
            builtins = [b for b in cls.__mro__ if b.__module__ == "builtins"]
            assert builtins[0] is not Exception, f"{name} resembles no builtin"
    assert drawn == set(errors.__all__), "the drawn tree and __all__ disagree"


def test_the_drawn_tree_matches_the_classes():
    # Each line's indent gives its parent; the class must subclass exactly that parent
    # among the chatlog errors, so the picture cannot drift from the code.
    lines = (errors.__doc__ or "").split("::", 1)[1].splitlines()
    parents: list[str] = []
    for line in lines:
        match = re.match(r"^ {4}((?:[│ ] {3})*)(?:[├└]── )?(\w+)", line)
        if match is None:
            if parents:
                break  # the tree ended
            continue
        depth = len(match.group(1)) // 4 + (1 if "──" in line else 0)
        name = match.group(2)
        del parents[depth:]
        cls = getattr(errors, name)
        own = [b.__name__ for b in cls.__bases__ if issubclass(b, errors.ChatlogError)]
        assert own == (parents[-1:] if parents else []), f"{name} is drawn under {parents}"
        parents.append(name)
    assert len(parents) >= 2


def test_chatlog_re_exports_every_error():
    import chatlog

    assert set(errors.__all__) <= set(chatlog.__all__)
    for name in errors.__all__:
        assert getattr(chatlog, name) is getattr(errors, name)


def test_errors_are_grouped_by_what_went_wrong_not_by_caller():
    # Read and write paths raise the same errors, so the groups are kinds of failure.
    assert issubclass(errors.BrokerUnavailable, errors.Unavailable)
    assert issubclass(errors.StoreUnavailable, errors.Unavailable)
    assert issubclass(errors.SessionNotFound, errors.Refused)
    assert issubclass(errors.OwnershipError, errors.Refused)
    # An unknown outcome is retried with the same event, so it is no "not stored" error.
    assert issubclass(errors.PublishTimeout, errors.OutcomeUnknown)
    assert not issubclass(errors.OutcomeUnknown, errors.Unavailable)
    assert not issubclass(errors.Unavailable, errors.OutcomeUnknown)
    assert not hasattr(errors, "ReadError")
    assert not hasattr(errors, "PublishError")


def test_old_import_locations_of_moved_errors_still_work():
    from chatlog.processors import kafka_projector, kafka_replay, summarizers

    assert kafka_projector.DataLoss is errors.DataLoss
    assert kafka_replay.Interrupted is errors.Interrupted
    for name in (
        "SummarizerError",
        "RetryableSummarizerError",
        "SummarizerTimeout",
        "SummarizerUnavailable",
    ):
        assert getattr(summarizers, name) is getattr(errors, name)


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


# What each layer may import of chatlog: dependencies point inward. `chatlog.distribution`
# (the package's name and version) imports nothing of chatlog, so every layer may use it;
# `chatlog.logs` (the log format, and the names of a line's context fields) imports only
# `chatlog.schemas.secrets`, so the processors, which log about partitions, sessions and
# events, may use it.
ALLOWED_IMPORTS = {
    "schemas": {"schemas", "distribution"},
    "producers": {"producers", "schemas", "distribution"},
    "projections": {"projections", "schemas", "distribution"},
    "processors": {"processors", "producers", "projections", "schemas", "distribution", "logs"},
}


@pytest.mark.parametrize("layer", LAYERS)
def test_layers_import_only_inward(layer):
    root = Path(__file__).resolve().parents[2]
    # `from chatlog import x` (the facade) is found as the name "".
    imported = re.compile(r"^\s*(?:from|import)\s+chatlog(?:\.(\w+)|\s+import\b)", re.MULTILINE)
    outward = {
        f"{path.relative_to(root)}: chatlog.{name}"
        for path in (root / layer).rglob("*.py")
        for name in imported.findall(path.read_text(encoding="utf-8"))
        if name not in ALLOWED_IMPORTS[layer]
    }
    assert outward == set()


def test_the_distribution_module_is_a_leaf():
    root = Path(__file__).resolve().parents[2]
    source = (root / "chatlog" / "distribution.py").read_text(encoding="utf-8")
    assert re.search(r"^\s*(?:from|import)\s+chatlog\b", source, re.MULTILINE) is None


# The web stack of the gateway (the server extra), imported only where named for it.
WEB_LIBRARIES = ("fastapi", "starlette", "uvicorn")


def test_web_libraries_only_in_modules_named_for_them():
    root = Path(__file__).resolve().parents[2]
    imports = re.compile(rf"^\s*(?:from|import)\s+({'|'.join(WEB_LIBRARIES)})\b", re.MULTILINE)
    found = {
        str(path.relative_to(root / "chatlog")): set(imports.findall(path.read_text("utf-8")))
        for path in (root / "chatlog").rglob("*.py")
        if imports.search(path.read_text("utf-8"))
    }
    # The routes (FastAPI, in gateway/fastapi_*.py) and the command that serves them
    # (uvicorn, imported lazily).
    assert found.pop("cli/serve.py") == {"uvicorn"}
    assert found.pop("gateway/fastapi_app.py") == {"fastapi", "starlette"}
    assert all(re.fullmatch(r"gateway/fastapi_\w+\.py", path) for path in found), found


def test_import_chatlog_loads_no_web_library():
    code = (
        "import sys, chatlog, chatlog.cli; "
        f"print([m for m in {WEB_LIBRARIES!r} if m in sys.modules])"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def test_the_metrics_library_only_in_modules_named_for_it():
    # Rule: prometheus_client (the metrics extra) is imported only by modules named
    # prom_*; the processes count in their own stats objects, which those modules read.
    root = Path(__file__).resolve().parents[2]
    imports = re.compile(r"^\s*(?:from|import)\s+prometheus_client\b", re.MULTILINE)
    found = {
        str(path.relative_to(root / "chatlog"))
        for path in (root / "chatlog").rglob("*.py")
        if imports.search(path.read_text("utf-8"))
    }
    assert found == {"prom_metrics.py"}
    assert all(Path(name).name.startswith("prom_") for name in found)


def test_import_chatlog_and_its_processors_loads_no_metrics_library():
    code = (
        "import sys, chatlog, chatlog.cli, chatlog.processors.kafka_projector; "
        "print('prometheus_client' in sys.modules)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "False"
