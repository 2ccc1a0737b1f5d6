"""The offline embedding model, for real: the weights inside the wordllama wheel, loaded
with no network at all, and vectors that place like meanings together."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

from chatlog import wiring
from chatlog.processors.embeddings import OFFLINE_MODEL, ResilientEmbedder
from chatlog.processors.wordllama_embeddings import WordLlamaEmbedder
from chatlog.schemas.errors import ConfigError
from chatlog.settings import Settings


@pytest.fixture(scope="module")
def model() -> WordLlamaEmbedder:
    return WordLlamaEmbedder()


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_vectors_have_unit_length_and_place_like_meanings_together(model):
    embedder = ResilientEmbedder(model)
    fact, question, other = embedder.embed(
        [
            "My order number is 4471-AB and it still has not arrived.",
            "What was the number of the order that never came?",
            "I prefer to be called in the evening, after six.",
        ]
    )
    assert (embedder.model, embedder.dimension) == (OFFLINE_MODEL, 256)
    for vector in (fact, question, other):
        assert len(vector) == 256
        assert math.isclose(math.sqrt(cosine(vector, vector)), 1.0, rel_tol=1e-4)
    assert cosine(fact, question) > cosine(other, question) + 0.1
    assert embedder.embed(["same text"]) == embedder.embed(["same text"])


@pytest.mark.parametrize("dimension", [128, 64])
def test_shorter_vectors_are_the_first_numbers_normalised_again(model, dimension):
    text = ["The Pixel 7 Pro battery drains when I use maps."]
    full = model.embed_batch(text).vectors[0]
    short = WordLlamaEmbedder(dimension=dimension).embed_batch(text).vectors[0]
    assert len(short) == dimension
    norm = math.sqrt(sum(x * x for x in full[:dimension]))
    assert short == pytest.approx([x / norm for x in full[:dimension]], abs=1e-5)


def test_another_size_is_a_config_error_naming_the_setting():
    with pytest.raises(ConfigError, match="CHATLOG_EMBEDDING_DIMENSION to one of them"):
        WordLlamaEmbedder(dimension=100)


def test_wiring_builds_the_offline_embedder_by_default():
    embedder = wiring.embedder(Settings.from_env({"CHATLOG_EMBEDDING_DIMENSION": "128"}))
    assert (embedder.model, embedder.dimension) == (OFFLINE_MODEL, 128)
    assert len(embedder.embed(["hello there"])[0]) == 128


LOAD_AND_EMBED = """
import json, logging, pathlib, sys
from chatlog.processors.wordllama_embeddings import WordLlamaEmbedder
root = logging.getLogger()
vector = WordLlamaEmbedder().embed_batch(["where is my parcel?"]).vectors[0]
print(json.dumps({
    "size": len(vector),
    "root_handlers": len(root.handlers),
    "root_level": root.level,
    "cache": (pathlib.Path.home() / ".cache" / "wordllama").exists(),
}))
"""


def _no_network() -> list[str] | None:
    """A command prefix that runs a program with no network (a namespace of its own with
    only a down loopback), or None where this machine cannot make one."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    probe = subprocess.run(
        [unshare, "--net", "--map-root-user", "true"], capture_output=True, check=False
    )
    return [unshare, "--net", "--map-root-user"] if probe.returncode == 0 else None


def test_the_model_loads_and_embeds_with_no_network_and_no_download(tmp_path):
    prefix = _no_network()
    if prefix is None:
        pytest.skip("unshare cannot make a network namespace here")
    # A fresh home: a download would have to land in ~/.cache/wordllama, and with no
    # network it would fail; the hub's offline switch is left off on purpose.
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}
    result = subprocess.run(
        [*prefix, sys.executable, "-c", LOAD_AND_EMBED],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["size"] == 256
    assert seen["cache"] is False
    # wordllama's import-time logging.basicConfig did not take the root logger.
    assert (seen["root_handlers"], seen["root_level"]) == (0, 30)
