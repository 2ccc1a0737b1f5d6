"""Token counters for `Context.to_openai`, named by a spec string in the settings.

What is a spec? The tokenizer is a deployment choice, so it is named in configuration
and turned into a `TokenCounter` once, at start-up:

- ``"approx"``: about four characters a token (`approx_tokens`); needs nothing.
- ``"tiktoken:<encoding>"``: exact counts with OpenAI's tiktoken (``pip install
  'chatlog-memory[tokens]'``), e.g. ``tiktoken:o200k_base`` (GPT-4o and later) or
  ``tiktoken:cl100k_base`` (GPT-4, GPT-3.5).
- ``"auto"``: ``tiktoken:o200k_base`` when it loads offline, else ``"approx"``.

Why never the network? tiktoken downloads an encoding's BPE file on first use, from
openaipublic.blob.core.windows.net, and caches it. A back end that cannot reach that host
would hang or fail at its first prompt instead of at start-up. So this module looks for
the cached file itself, where tiktoken looks (`_require_cached_bpe_file`), checks its
hash as tiktoken does (tiktoken deletes a file that fails the check and downloads it
again), and raises `ConfigError`, saying how to fix it, when the file is not there. tiktoken is
imported only when a spec asks for it: the projections are a pure core.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from chatlog.projections.context import TokenCounter, approx_tokens
from chatlog.schemas.errors import ConfigError, MissingExtra

__all__ = ["token_counter"]

_TIKTOKEN_PREFIX = "tiktoken:"
_AUTO_ENCODING = "o200k_base"
_BLOBS = "https://openaipublic.blob.core.windows.net/encodings/"

# Each encoding's BPE file and its sha256, as in tiktoken_ext/openai_public.py (a unit
# test checks them against the installed tiktoken). gpt2 is left out: it is built from
# two files in another format.
_BPE_FILES: dict[str, tuple[str, str]] = {
    "r50k_base": (
        _BLOBS + "r50k_base.tiktoken",
        "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    ),
    "p50k_base": (
        _BLOBS + "p50k_base.tiktoken",
        "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
    ),
    "p50k_edit": (
        _BLOBS + "p50k_base.tiktoken",
        "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
    ),
    "cl100k_base": (
        _BLOBS + "cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        _BLOBS + "o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "o200k_harmony": (
        _BLOBS + "o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}


def token_counter(spec: str = "approx") -> TokenCounter:
    """The token counter that `spec` names; a `ConfigError` says why one cannot be had.

    Never touches the network: a tiktoken encoding whose BPE file is not cached locally
    is an error (and, for ``"auto"``, a silent fall-back to ``"approx"``).
    """
    if spec == "approx":
        return approx_tokens
    if spec == "auto":
        try:
            return _tiktoken_counter(_AUTO_ENCODING, spec=spec)
        except (ConfigError, MissingExtra):
            return approx_tokens
    if spec.startswith(_TIKTOKEN_PREFIX) and spec[len(_TIKTOKEN_PREFIX) :] in _BPE_FILES:
        return _tiktoken_counter(spec[len(_TIKTOKEN_PREFIX) :], spec=spec)
    raise ConfigError(
        f"unknown tokenizer {spec!r}; use 'approx', 'auto' or 'tiktoken:<encoding>' with "
        f"an encoding among {', '.join(sorted(_BPE_FILES))}",
        spec=spec,
    )


def _tiktoken_counter(encoding_name: str, *, spec: str) -> TokenCounter:
    try:
        import tiktoken  # noqa: PLC0415 - optional, and kept out of the pure core's imports
    except ImportError as missing:
        raise MissingExtra.needs(
            "tokens", f"tokenizer {spec!r}", missing, instead="use the tokenizer 'approx'"
        ) from missing
    _require_cached_bpe_file(encoding_name, spec=spec)
    try:
        encoding = tiktoken.get_encoding(encoding_name)
    except ValueError as exc:  # an encoding newer than the installed tiktoken
        raise ConfigError(
            f"tokenizer {spec!r}: tiktoken {tiktoken.__version__} cannot load "
            f"{encoding_name}: {exc}; upgrade tiktoken or use another encoding",
            spec=spec,
        ) from exc

    def count_tokens(text: str) -> int:
        # Ordinary: text such as "<|endoftext|>" in a message counts as text, as the API
        # counts it, instead of raising as `encode` does for special tokens.
        return len(encoding.encode_ordinary(text))

    return count_tokens


def _tiktoken_cache_dir() -> tuple[str, str | None]:
    """tiktoken's cache directory, and the variable that names it (None: the default)."""
    for variable in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if variable in os.environ:
            return os.environ[variable], variable
    return os.path.join(tempfile.gettempdir(), "data-gym-cache"), None


def _require_cached_bpe_file(encoding_name: str, *, spec: str) -> None:
    """Check that the BPE file tiktoken will read for `encoding_name` is cached and whole.

    tiktoken (0.7 to 0.14, `tiktoken.load.read_file_cached`) caches the file downloaded
    from URL in ``<dir>/<sha1(URL) in hex>``, where dir is $TIKTOKEN_CACHE_DIR if set,
    else $DATA_GYM_CACHE_DIR if set, else ``<tempfile.gettempdir()>/data-gym-cache``; a
    set but empty variable turns caching off. It reads the file only if its sha256 is
    the expected one, and downloads it otherwise.
    """
    url, sha256 = _BPE_FILES[encoding_name]
    cache_dir, variable = _tiktoken_cache_dir()
    if not cache_dir:
        raise ConfigError(
            f"tokenizer {spec!r}: {variable} is set but empty, which makes tiktoken "
            "download its BPE file at every start; set it to the directory that holds the "
            "cached file, or use the tokenizer 'approx'",
            spec=spec,
            setting=variable,
        )
    path = Path(cache_dir, hashlib.sha1(url.encode()).hexdigest())  # noqa: S324 - tiktoken's key
    where = f"${variable}" if variable else "the default cache (TIKTOKEN_CACHE_DIR is not set)"
    fetch = (
        f"on a machine with internet access run TIKTOKEN_CACHE_DIR=<dir> python -c "
        f"\"import tiktoken; tiktoken.get_encoding('{encoding_name}')\", copy <dir> here "
        f"and set TIKTOKEN_CACHE_DIR to it (or save {url} as {path}); or use the "
        "tokenizer 'approx'"
    )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"tokenizer {spec!r}: tiktoken's {encoding_name} BPE file is not cached in "
            f"{where}: no {path}, and chatlog does not download it; {fetch}",
            spec=spec,
            path=str(path),
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"tokenizer {spec!r}: cannot read tiktoken's cached {encoding_name} BPE file "
            f"{path}: {exc}",
            spec=spec,
            path=str(path),
        ) from exc
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ConfigError(
            f"tokenizer {spec!r}: {path} is not tiktoken's {encoding_name} BPE file (its "
            f"sha256 is not {sha256}: a partial or corrupt download), and tiktoken would "
            f"download it again; delete it, then {fetch}",
            spec=spec,
            path=str(path),
        )
