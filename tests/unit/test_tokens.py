"""Token counters by spec: approx, tiktoken from its local cache only, and auto."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from chatlog.projections import tokens
from chatlog.projections.context import approx_tokens
from chatlog.projections.tokens import token_counter
from chatlog.schemas.errors import ConfigError, MissingExtra

tiktoken = pytest.importorskip("tiktoken")

CONTENT = b"a stand-in for a BPE file\n"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test here fails if anything so much as resolves a host name."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a unit test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield attempts
    assert attempts == []


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """An empty tiktoken cache, named by TIKTOKEN_CACHE_DIR."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    return tmp_path


@pytest.fixture
def loaded(monkeypatch) -> list[str]:
    """Stand in for tiktoken's loader with a byte-level encoding; records what it loads.

    tiktoken cannot be handed a small synthetic BPE file under a real encoding's name (it
    checks the file's sha256), so `get_encoding` is replaced, and the BPE table of the
    encodings under test points at `CONTENT`.
    """
    names: list[str] = []
    byte_level = tiktoken.Encoding(
        "bytes",
        pat_str=r"\S+|\s+",
        mergeable_ranks={bytes([b]): b for b in range(256)},
        special_tokens={"<|endoftext|>": 256},
    )

    def get_encoding(name):
        names.append(name)
        return byte_level

    monkeypatch.setattr(tiktoken, "get_encoding", get_encoding)
    for name in ("cl100k_base", "o200k_base"):
        url = f"https://example.invalid/{name}.tiktoken"
        monkeypatch.setitem(tokens._BPE_FILES, name, (url, hashlib.sha256(CONTENT).hexdigest()))
    return names


def cache(directory: Path, encoding: str, content: bytes = CONTENT) -> Path:
    """Put `content` where tiktoken caches `encoding`'s BPE file."""
    url, _ = tokens._BPE_FILES[encoding]
    path = directory / hashlib.sha1(url.encode()).hexdigest()
    path.write_bytes(content)
    return path


def test_approx_is_the_default():
    assert token_counter() is approx_tokens
    assert token_counter("approx") is approx_tokens


@pytest.mark.parametrize(
    "spec", ["", "APPROX", "gpt-4o", "tiktoken", "tiktoken:", "tiktoken:nope", "tiktoken:gpt2"]
)
def test_an_unknown_spec_is_refused_with_the_valid_forms(spec):
    with pytest.raises(ConfigError) as raised:
        token_counter(spec)
    assert "'approx', 'auto' or 'tiktoken:<encoding>'" in str(raised.value)
    assert "cl100k_base" in str(raised.value)
    assert "o200k_base" in str(raised.value)
    assert raised.value.context["spec"] == spec


@pytest.mark.timeout(5)
def test_an_uncached_encoding_is_a_config_error_not_a_download(cache_dir, monkeypatch, no_network):
    reached: list[str] = []
    monkeypatch.setattr(tiktoken, "get_encoding", reached.append)
    with pytest.raises(ConfigError) as raised:
        token_counter("tiktoken:cl100k_base")
    message = str(raised.value)
    expected = cache_dir / hashlib.sha1(tokens._BPE_FILES["cl100k_base"][0].encode()).hexdigest()
    assert "not cached" in message
    assert str(expected) in message
    assert "TIKTOKEN_CACHE_DIR" in message
    assert "'approx'" in message
    assert raised.value.context["path"] == str(expected)
    assert reached == []
    assert no_network == []


def test_a_cached_encoding_counts_with_tiktoken(cache_dir, loaded):
    cache(cache_dir, "cl100k_base")
    count = token_counter("tiktoken:cl100k_base")
    assert loaded == ["cl100k_base"]
    assert count("héllo") == 6  # one token a byte in the stand-in encoding
    # Special-token text in a message is text; tiktoken's `encode` would raise on it.
    assert count("a <|endoftext|>") == 15


def test_a_corrupt_cache_file_is_an_error_and_is_left_alone(cache_dir, loaded):
    path = cache(cache_dir, "cl100k_base", b"half a downlo")
    with pytest.raises(ConfigError, match="corrupt"):
        token_counter("tiktoken:cl100k_base")
    assert loaded == []
    assert path.read_bytes() == b"half a downlo"


def test_an_empty_cache_variable_is_an_error(monkeypatch, loaded):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    with pytest.raises(ConfigError, match="TIKTOKEN_CACHE_DIR is set but empty"):
        token_counter("tiktoken:o200k_base")
    assert loaded == []


@pytest.mark.parametrize("where", ["TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR", "tempdir"])
def test_the_cache_is_found_where_tiktoken_looks(where, tmp_path, monkeypatch, loaded):
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    if where == "tempdir":
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        directory = tmp_path / "data-gym-cache"
        directory.mkdir()
    else:
        directory = tmp_path / "cache"
        directory.mkdir()
        monkeypatch.setenv(where, str(directory))
        # TIKTOKEN_CACHE_DIR wins over DATA_GYM_CACHE_DIR: a decoy for the latter.
        if where == "TIKTOKEN_CACHE_DIR":
            monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(tmp_path / "decoy"))
    cache(directory, "cl100k_base")
    assert token_counter("tiktoken:cl100k_base")("abc") == 3
    # And the installed tiktoken reads that very file, without a download.
    from tiktoken.load import read_file_cached

    url, sha256 = tokens._BPE_FILES["cl100k_base"]
    assert read_file_cached(url, sha256) == CONTENT


def test_auto_is_o200k_when_cached(cache_dir, loaded):
    cache(cache_dir, "o200k_base")
    count = token_counter("auto")
    assert count is not approx_tokens
    assert loaded == ["o200k_base"]
    assert count("abcdefgh") == 8


def test_auto_falls_back_to_approx_when_not_cached(cache_dir, loaded):
    assert token_counter("auto") is approx_tokens
    assert loaded == []


def test_without_tiktoken_installed(cache_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # makes `import tiktoken` fail
    with pytest.raises(
        MissingExtra, match=r"pip install .chatlog-memory\[tokens\]., or use the tokenizer .approx."
    ):
        token_counter("tiktoken:o200k_base")
    assert token_counter("auto") is approx_tokens


def test_an_encoding_the_installed_tiktoken_lacks(cache_dir, loaded, monkeypatch):
    def unknown(name):
        raise ValueError(f"Unknown encoding {name}.")

    monkeypatch.setattr(tiktoken, "get_encoding", unknown)
    cache(cache_dir, "o200k_base")
    with pytest.raises(ConfigError, match="upgrade tiktoken"):
        token_counter("tiktoken:o200k_base")
    assert token_counter("auto") is approx_tokens


def test_the_bpe_files_are_those_of_the_installed_tiktoken(monkeypatch):
    from tiktoken_ext import openai_public

    asked: list[tuple[str, str | None]] = []

    def load_tiktoken_bpe(url, expected_hash=None):
        asked.append((url, expected_hash))
        return {}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", load_tiktoken_bpe)
    for name, blob in tokens._BPE_FILES.items():
        if name not in openai_public.ENCODING_CONSTRUCTORS:
            continue  # newer than the installed tiktoken
        asked.clear()
        openai_public.ENCODING_CONSTRUCTORS[name]()
        assert asked == [blob], name


def test_importing_the_module_does_not_import_tiktoken():
    code = "import sys, chatlog.projections.tokens; print('tiktoken' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "False"
