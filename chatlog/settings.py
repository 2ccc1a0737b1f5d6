"""Settings: every knob chatlog has, read once from the environment and validated.

Each setting is an environment variable ``CHATLOG_<NAME>`` (docs/configuration.md lists them).
Librdkafka properties pass straight through as ``CHATLOG_KAFKA__<PROPERTY>``, with dots
written as single underscores (``CHATLOG_KAFKA__SASL_MECHANISM=PLAIN`` sets
``sasl.mechanism``), which is how TLS and SASL are configured.

Where the Kafka and Redis addresses are not set, the addresses of the local stack that
`make services` started (its state file) are used, then the conventional local ports.
A ``CHATLOG_*`` variable that is not a setting is an error, not silently ignored: a typo
in a deployment should stop it at start-up, not change its behaviour.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from chatlog.local_stack import read_addresses
from chatlog.logs import LogFormat
from chatlog.processors.embeddings import (
    DEFAULT_MAX_CHARS,
    OFFLINE_MODEL,
    OPENAI_DEFAULT_MODEL,
    EmbeddingSpec,
    Provider,
    embedding_spec,
)
from chatlog.schemas.errors import ConfigError
from chatlog.schemas.limits import OFF, Rate, parse_rate
from chatlog.schemas.secrets import MASK, is_secret, redacted_url

__all__ = [
    "ENV_PREFIX",
    "FOREVER",
    "PUBLIC_KEY_ALGORITHMS",
    "SHARED_SECRET_ALGORITHMS",
    "Settings",
    "check_auth_algorithms",
]

ENV_PREFIX = "CHATLOG_"
_KAFKA_PASSTHROUGH = "CHATLOG_KAFKA__"
# Kafka's rule for topic names and group.instance.id alike.
_KAFKA_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
# The broker's default group.min.session.timeout.ms; a broker set higher refuses the join,
# which the projector reports naming CHATLOG_SESSION_TIMEOUT_S.
_MIN_SESSION_TIMEOUT_S = 6.0
# Beyond a minute a crash costs more than librdkafka's own default (45 s) would.
_MAX_SESSION_TIMEOUT_S = 60.0


_DAY_S = 24 * 3600.0
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": _DAY_S}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
# Below a minute, the log cleaner (which runs every 15 s by default) cannot keep a bound.
_MIN_SHRED_S = 60.0
_MIN_AUTH_SECRET = 32
# A cap above this is a typo, not a plan: no user holds ten million sessions at once.
_MAX_SESSION_CAP = 10_000_000


def _retention(value: Any) -> float | None:
    """Seconds from ``90``, ``90s``, ``15m``, ``24h``, ``7d``; None from ``forever``."""
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    text = str(value).strip().lower()
    if text in (FOREVER, "-1"):
        return None
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{value!r} is not a duration: write a number with a unit, as 90s, 15m, 24h or 7d"
        )
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _duration(value: Any) -> float:
    seconds = _retention(value)
    if seconds is None:
        raise ValueError("must be a finite duration, as 90s, 15m, 24h or 7d; not 'forever'")
    return seconds


def _lines(value: Any) -> Any:
    """A list setting from the environment: one entry a line (a regular expression may
    hold commas, so no other separator is safe), blank lines skipped."""
    if not isinstance(value, str):
        return value
    return [line.strip() for line in value.splitlines() if line.strip()]


def _patterns(value: Any) -> Any:
    """``NAME=regex`` lines as a mapping, spaces around either part ignored (a mapping
    is taken as it is)."""
    if isinstance(value, Mapping):
        return dict(value)
    entries = {}
    for line in _lines(value):
        name, equals, pattern = (part.strip() for part in line.partition("="))
        if not equals or not name or not pattern:
            raise ValueError(f"{line!r} is not NAME=regex")
        entries[name] = pattern
    return entries


def _names(value: Any) -> Any:
    """A list setting of plain names (JWT algorithms): separated by commas or spaces."""
    if not isinstance(value, str):
        return value
    return tuple(name for name in re.split(r"[,\s]+", value) if name)


# A custom kind names its placeholders ([NAME], [NAME#1]), so it is a plain word.
_KIND_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")

# A request rate (`chatlog.schemas.limits`); None: no limit ("off").
# Dumped as the text it is written in, so that settings sent to a child process as data
# (a replay worker) read back as the same rate.
RateSetting = Annotated[
    Rate | None,
    BeforeValidator(parse_rate),
    PlainSerializer(lambda rate: OFF if rate is None else str(rate)),
]
# A time span written with a unit; a Retention may also be "forever" (None).
Duration = Annotated[float, BeforeValidator(_duration)]
Retention = Annotated[float | None, BeforeValidator(_retention)]
FOREVER = "forever"


class Settings(BaseModel):
    """chatlog's configuration; `Settings.from_env()` is the usual way to get one."""

    # hide_input_in_errors: pydantic's own message (a Settings built directly, not through
    # from_env) would otherwise quote a rejected value, a URL with its password included.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis URL (redis:// or rediss://)"
    )
    # The recall index needs Redis's query engine (Redis Stack, or Redis 8); the read-model
    # runs on any Redis. One Redis 8 can hold both: leave this unset.
    recall_redis_url: str | None = Field(
        None,
        description="Redis with the query engine for the recall index; unset: CHATLOG_REDIS_URL",
    )
    schema_registry_url: str | None = Field(
        None, description="Confluent-compatible Schema Registry; unset: single-object encoding"
    )
    # TLS and authentication of the clients other than librdkafka (chatlog.schemas.transport maps
    # them, and the CHATLOG_KAFKA__* properties for the summarizer, to each client).
    schema_registry_basic_auth: SecretStr | None = Field(
        None, description="the Schema Registry's basic auth, as user:password"
    )
    schema_registry_ca_file: Path | None = Field(
        None, description="PEM file of the CA that signed the Schema Registry's certificate"
    )
    schema_registry_cert_file: Path | None = Field(
        None, description="PEM client certificate for the Schema Registry (mutual TLS)"
    )
    schema_registry_key_file: Path | None = Field(
        None, description="PEM private key of that client certificate"
    )
    redis_tls_ca_file: Path | None = Field(
        None, description="PEM file of the CA that signed Redis's certificate (rediss://)"
    )
    redis_tls_cert_file: Path | None = Field(
        None, description="PEM client certificate for Redis (tls-auth-clients yes)"
    )
    redis_tls_key_file: Path | None = Field(
        None, description="PEM private key of that client certificate"
    )
    topic: str = Field("chatlog.events", description="the events topic (source of truth)")
    dlq_topic: str = Field("chatlog.events.dlq", description="dead letters from processors")
    keys_topic: str = Field(
        "chatlog.keys", description="each user's wrapped data keys (compacted; erasure shreds)"
    )
    audit_topic: str = Field(
        "chatlog.audit", description="the audit trail (hash-chained, no personal data)"
    )
    retention: Retention = Field(
        None, description="how long the events topic keeps events (unset or 'forever': forever)"
    )
    dlq_retention: Retention = Field(
        7 * _DAY_S, description="how long the dead-letter topic keeps records ('forever' allowed)"
    )
    audit_retention: Retention = Field(
        400 * _DAY_S, description="how long the audit topic keeps records ('forever' allowed)"
    )
    key_shred_within: Duration = Field(
        _DAY_S,
        description="the bound within which an erased user's key leaves the Kafka disks",
    )
    partitions: int = Field(6, ge=1, le=10_000, description="partitions when creating topics")
    replication_factor: int | None = Field(
        None, ge=1, description="replicas when creating topics; unset: min(3, brokers)"
    )
    min_insync_replicas: int | None = Field(
        None, ge=1, description="min ISR of created topics; unset: 1 for RF 1-2, else 2"
    )
    delivery_timeout_s: float = Field(
        30.0, gt=0, description="how long a publish may take before it fails"
    )
    linger_ms: int = Field(2, ge=0, le=1000, description="producer batching delay")
    redis_cluster: bool = Field(
        False,
        description="CHATLOG_REDIS_URL names a node of a Redis Cluster: use the cluster client",
    )
    redis_prefix: str = Field("chatlog", description="prefix of every read-model key")
    window: int = Field(20, ge=1, le=10_000, description="recent messages kept per session")
    max_overflow: int = Field(
        200, ge=0, le=100_000, description="evicted, not yet summarized messages kept"
    )
    session_ttl_s: float = Field(
        30 * 24 * 3600, ge=0, description="idle time before a session's view expires; 0: never"
    )
    read_timeout_s: float = Field(
        5.0, gt=0, description="how long a read waits for its own write (after=position)"
    )
    task_stall_s: float = Field(
        300.0,
        gt=0,
        description="how long a running task may go without a heartbeat before reads "
        "show it stalled",
    )
    # Without a bound, a stalled Redis (paused, swapping, a fork) holds a read for as
    # long as it stalls, whatever timeout the reader asked for.
    redis_timeout_s: float = Field(
        1.0, gt=0, le=60, description="how long a Redis connect or reply may take"
    )
    projector_group: str = Field("chatlog-projector", description="the projector's group id")
    # Under backlog a larger batch folds several events of a session into one write
    # (a third of the writes at 5,000 than at 1,000); at low load batches stay small,
    # because the projector takes only what has already arrived.
    projector_batch: int = Field(5000, ge=1, le=100_000, description="records per batch")
    # Live, batches of one to a few records cost two to three times the CPU per event
    # of a drain; holding them a little for the records on their way saves it
    # (`chatlog.processors.projector_coalescing`). A lone event is never held.
    projector_hold_ms: float = Field(
        2.0,
        ge=0,
        le=100,
        description="how long the projector may hold a small live batch for the records "
        "on their way, in ms; 0: never",
    )
    on_data_loss: Literal["stop", "rebuild"] = Field(
        "stop", description="when Redis lost projected data: stop, or rebuild it from the log"
    )
    # Static group membership: restarted under the same id, a projector or summarizer gets
    # its partitions back at once instead of waiting out its own old session. Two live
    # processes of one group must not share an id: the broker fences the older one out.
    instance_id: str = Field(
        default_factory=socket.gethostname,
        description="group.instance.id of this projector, summarizer or embedder; unique within "
        "its group",
    )
    # Heartbeats come from librdkafka's (aiokafka's) own thread, so a long batch never
    # expires a session: only a dead or cut-off process does.
    session_timeout_s: float = Field(
        10.0, description="how long a processor that stopped answering keeps its partitions"
    )
    summarizer_group: str = Field("chatlog-summarizer", description="the summarizer's group id")
    summary_threshold: int = Field(
        10, ge=1, le=100_000, description="overflow turns that trigger a summary"
    )
    summary_max_tokens: int = Field(400, ge=16, le=32_000, description="cap on a summary's size")
    # A summary is made of what users said: with the system's authority, a stored
    # injection ("SYSTEM OVERRIDE: ...") would give orders. `system` is the old behaviour.
    summary_role: Literal["data", "system"] = Field(
        "data",
        description="how the summary enters prompts: data (quoted, user role) or system",
    )
    summarizer_concurrency: int = Field(
        8, ge=1, le=1_000, description="summaries in flight at once, across sessions"
    )
    llm_base_url: str | None = Field(
        None, description="OpenAI-compatible API for summaries; unset: offline extractive"
    )
    llm_ca_file: Path | None = Field(
        None,
        description="PEM file of the CA that signed the LLM endpoint's certificate; unset: "
        "the usual CAs",
    )
    llm_model: str = Field("gpt-4o-mini", description="the model that writes summaries")
    llm_api_key: SecretStr | None = Field(
        None, description="API key of the LLM endpoint; unset: OPENAI_API_KEY, else none"
    )
    llm_timeout_s: float = Field(30.0, gt=0, description="how long one summary call may take")
    llm_breaker_reset_s: float = Field(
        30.0, ge=0, description="pause after 5 failed LLM calls in a row, before a trial call"
    )
    summary_retry_s: float = Field(
        15.0, ge=0, description="wait before asking again for a session's failed summary"
    )
    tokenizer: str = Field(
        "approx", description="token counter: approx, auto, or tiktoken:<encoding>"
    )
    # No authenticated principals yet: the HTTP gateway (planned) will pass its own.
    principal: str | None = Field(
        None, description="who the audit trail names for this process; unset: <os user>@<host>"
    )
    master_key: SecretStr | None = Field(
        None,
        description="the master keys that wrap data keys: '<id>:<base64>[,...]', first current",
    )
    master_key_file: Path | None = Field(
        None, description="a file holding CHATLOG_MASTER_KEY's value (the local stack makes one)"
    )
    pii_mode: Literal["off", "redact", "mask", "tokenize"] = Field(
        "redact",
        description="what the producer writes in place of personal data: off, redact, mask, "
        "tokenize",
    )
    pii_patterns: Annotated[dict[str, str], BeforeValidator(_patterns)] = Field(
        default_factory=dict,
        description="more kinds to redact, one NAME=regex a line",
    )
    pii_allow: Annotated[tuple[str, ...], BeforeValidator(_lines)] = Field(
        (), description="exact strings never redacted, one a line"
    )
    pii_phone_region: str | None = Field(
        None,
        description="ISO country whose national phone numbers count too; unset: only +CC numbers",
    )
    # The HTTP gateway (`chatlog serve`) checks bearer JWTs signed with this (HS256); no
    # default, since a default secret would be one every deployment shares.
    auth_secret: SecretStr | None = Field(
        None,
        description="shared HS256 secret of the gateway's JWTs (at least 32 characters); "
        "required by chatlog serve and chatlog token",
    )
    auth_issuer: str = Field("chatlog", description="the iss every gateway JWT must carry")
    auth_audience: str = Field("chatlog", description="the aud every gateway JWT must carry")
    auth_tenant_claim: str = Field(
        "tenant", description="the JWT claim naming the caller's tenant; absent: default"
    )
    # Production: the identity provider's public keys, fetched (and cached) from its JWKS.
    auth_jwks_url: str | None = Field(
        None,
        description="JWKS URL of the identity provider whose RS256/ES256 JWTs the gateway "
        "accepts; unset: HS256 with CHATLOG_AUTH_SECRET",
    )
    auth_algorithms: Annotated[tuple[str, ...] | None, BeforeValidator(_names)] = Field(
        None,
        description="the JWT algorithms accepted, comma-separated; unset: HS256, or RS256,ES256 "
        "with a JWKS URL",
    )
    auth_jwks_timeout_s: float = Field(
        5.0, gt=0, le=60, description="how long one fetch of the JWKS may take"
    )
    auth_jwks_refresh_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="the least time between two fetches of the JWKS that a token with an "
        "unknown kid triggers",
    )
    api_keys_file: Path | None = Field(
        None,
        description="the gateway's service API keys (hashes only); unset: "
        "<CHATLOG_STATE_DIR>/api-keys.json",
    )
    # Metrics and health of a long-lived process (chatlog.prom_metrics), never on the
    # gateway's public port: /metrics tells a stranger the traffic and the partitions.
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="port of /metrics, /livez and /readyz of a long-lived process; 0: none",
    )
    metrics_host: str = Field(
        "127.0.0.1", description="address the metrics port listens on (0.0.0.0: every one)"
    )
    ready_max_lag: int = Field(
        1000,
        ge=0,
        description="records left to project while still ready: a projector's /readyz, on "
        "any of its partitions; the gateway's /readyz, on the whole events topic",
    )
    llm_price_input_per_mtok: float | None = Field(
        None,
        ge=0,
        description="price of a million prompt tokens, in dollars; set with the output price "
        "to count the LLM's cost",
    )
    llm_price_output_per_mtok: float | None = Field(
        None, ge=0, description="price of a million completion tokens, in dollars"
    )
    # Semantic recall (docs/recall.md). Off, nothing needs Redis's query engine; on, the
    # embedder fills the index, replay rebuilds it with the read-model, and reads may recall.
    recall: bool = Field(
        False,
        description="semantic recall over past turns (needs `chatlog run embedder` and a "
        "Redis with the query engine: CHATLOG_RECALL_REDIS_URL)",
    )
    # The model that embeds turns and queries. Its name and size are recorded with the
    # vector index; another model means a rebuild.
    embedder_group: str = Field("chatlog-embedder", description="the embedder's group id")
    embedding_provider: Provider = Field(
        "offline",
        description="who embeds turns: offline (wordllama, in-process, no key, no download) "
        "or openai (any OpenAI-compatible embeddings endpoint)",
    )
    embedding_model: str | None = Field(
        None,
        description=f"the embedding model; unset: {OFFLINE_MODEL} offline, "
        f"{OPENAI_DEFAULT_MODEL} for an endpoint",
    )
    embedding_dimension: int | None = Field(
        None,
        ge=1,
        le=16_384,
        description="numbers in a vector; unset: 256 offline (64 and 128 allowed), the "
        "model's own for OpenAI's models, else required",
    )
    embedding_base_url: str | None = Field(
        None, description="the OpenAI-compatible API for embeddings; unset: OpenAI's"
    )
    embedding_api_key: SecretStr | None = Field(
        None, description="API key of the embeddings endpoint; unset: OPENAI_API_KEY, else none"
    )
    embedding_ca_file: Path | None = Field(
        None,
        description="PEM file of the CA that signed the embeddings endpoint's certificate; "
        "unset: the usual CAs",
    )
    embedding_send_dimension: bool = Field(
        False,
        description="ask the endpoint for vectors of CHATLOG_EMBEDDING_DIMENSION numbers "
        "(OpenAI's dimensions parameter; text-embedding-3 models shorten theirs)",
    )
    embedding_batch_size: int = Field(
        64, ge=1, le=2048, description="texts embedded in one call at most"
    )
    embedding_max_chars: int = Field(
        DEFAULT_MAX_CHARS,
        ge=1,
        le=1_000_000,
        description="characters of a turn that are embedded; the rest is cut",
    )
    embedding_timeout_s: float = Field(
        30.0, gt=0, description="how long one call to the embeddings endpoint may take"
    )
    embedding_breaker_reset_s: float = Field(
        30.0,
        ge=0,
        description="after 5 failed embedding calls in a row, how long to stop calling "
        "before one trial call",
    )
    # A collector parses JSON lines; a person reads plain ones (chatlog.logs has the fields).
    log_format: LogFormat = Field(
        "plain", description="how processes log: plain lines, or json (one object a line)"
    )
    # Limits (issue 15). A human chatting sends well under a request a second; the burst
    # lets a page load and a client's retries through, the rate stops one user's loop
    # from taking the gateway. A tenant's right size depends on its plan: no default.
    rate_user: RateSetting = Field(
        Rate(count=20, unit="s", burst=60),
        description="requests a user may make of the gateway: N/s|m|h [burst=B], or off",
    )
    rate_tenant: RateSetting = Field(
        None, description="requests all users of a tenant may make together; off: none"
    )
    max_sessions_per_user: int = Field(
        1000,
        description="sessions a user may hold at once (started, not expired or erased); 0: any",
    )
    applied_notices: bool = Field(
        True,
        description="the projector publishes a notice per session it writes, for the "
        "gateway's live updates; off, streams find changes by their 3 s rechecks only",
    )
    state_dir: Path = Field(Path(".chatlog"), description="where the local stack keeps state")
    kafka: dict[str, str] = Field(
        default_factory=dict, description="extra librdkafka properties (CHATLOG_KAFKA__*)"
    )

    @field_validator("topic", "dlq_topic", "keys_topic", "audit_topic")
    @classmethod
    def _topic_name(cls, value: str) -> str:
        if _KAFKA_NAME.fullmatch(value) is None:
            raise ValueError(f"{value!r} is not a valid Kafka topic name (1-249 of [A-Za-z0-9._-])")
        return value

    @field_validator("instance_id")
    @classmethod
    def _instance_id(cls, value: str) -> str:
        if _KAFKA_NAME.fullmatch(value) is None:
            raise ValueError(
                f"{value!r} is not a valid group.instance.id (1-249 of [A-Za-z0-9._-]); the "
                f"default is the host name: set one that is valid and unique within the group"
            )
        return value

    @field_validator("session_timeout_s")
    @classmethod
    def _session_timeout(cls, value: float) -> float:
        if not _MIN_SESSION_TIMEOUT_S <= value <= _MAX_SESSION_TIMEOUT_S:
            raise ValueError(
                f"must be between {_MIN_SESSION_TIMEOUT_S:g} s (the broker's default "
                f"group.min.session.timeout.ms) and {_MAX_SESSION_TIMEOUT_S:g} s (longer only "
                f"delays the takeover of a dead processor's partitions)"
            )
        return value

    @field_validator("kafka")
    @classmethod
    def _no_group_membership(cls, value: dict[str, str]) -> dict[str, str]:
        for prop, setting in _MEMBERSHIP_SETTINGS.items():
            if prop in value:
                raise ValueError(
                    f"{prop} is set by {setting}, which the projector and the summarizer both "
                    f"use; set that instead of {_KAFKA_PASSTHROUGH}{prop.replace('.', '_').upper()}"
                )
        return value

    @field_validator("pii_patterns")
    @classmethod
    def _pii_patterns(cls, value: dict[str, str]) -> dict[str, str]:
        checked = {}
        for name, pattern in value.items():
            if _KIND_NAME.fullmatch(name) is None:
                raise ValueError(
                    f"pattern name {name!r}: use a letter then up to 31 letters, digits or "
                    f"'_' (it names the placeholder, [{name.upper()}])"
                )
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {name} does not compile: {exc}") from None
            if compiled.fullmatch("") is not None:
                raise ValueError(
                    f"pattern {name} matches the empty string: it must match at least one "
                    f"character (write + for *, drop a trailing ?)"
                )
            checked[name.upper()] = pattern
        return checked

    @field_validator("pii_phone_region")
    @classmethod
    def _pii_phone_region(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # Imported here: the detector loads phonenumbers, which `import chatlog` need not.
        from chatlog.schemas.pii import Detector  # noqa: PLC0415

        return Detector(region=value).region  # its ValueError names the region

    @field_validator("auth_secret")
    @classmethod
    def _auth_secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        # RFC 7518 3.2: an HS256 key shorter than the hash (32 bytes) can be brute-forced.
        if value is not None and len(value.get_secret_value().encode()) < _MIN_AUTH_SECRET:
            raise ValueError(
                f"must be at least {_MIN_AUTH_SECRET} bytes; make one with "
                f"python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return value

    @field_validator("max_sessions_per_user")
    @classmethod
    def _session_cap(cls, value: int) -> int:
        if not 0 <= value <= _MAX_SESSION_CAP:
            raise ValueError(
                f"must be between 1 and {_MAX_SESSION_CAP} sessions a user may hold at once, "
                f"or 0 for no cap"
            )
        return value

    @field_validator("redis_url", "recall_redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"{redacted_url(value)!r} must start with redis://, rediss:// or unix://"
            )
        return value

    @field_validator("key_shred_within")
    @classmethod
    def _shred_bound(cls, value: float) -> float:
        if value < _MIN_SHRED_S:
            raise ValueError(
                f"must be at least {_MIN_SHRED_S:g} s: the broker's log cleaner cannot keep "
                f"a tighter bound"
            )
        return value

    @model_validator(mode="after")
    def _tls_files(self) -> Settings:
        # A file that cannot be read would otherwise fail at the first connection, inside
        # a client's own error; and TLS files beside a plain URL would be ignored.
        groups = {
            "redis_tls": (self.redis_url.startswith("rediss://"), "CHATLOG_REDIS_URL=rediss://..."),
            "schema_registry": (
                (self.schema_registry_url or "").lower().startswith("https://"),
                "CHATLOG_SCHEMA_REGISTRY_URL=https://...",
            ),
            "llm": (
                (self.llm_base_url or "").lower().startswith("https://"),
                "CHATLOG_LLM_BASE_URL=https://...",
            ),
        }
        for prefix, (secure, needs) in groups.items():
            for part in ("ca_file", "cert_file", "key_file"):
                name = f"{prefix}_{part}"
                path: Path | None = getattr(self, name, None)
                if path is None:
                    continue
                if not secure:
                    raise ValueError(f"{self.env_name(name)} is set: it needs {needs}")
                if not os.access(path, os.R_OK) or not path.is_file():
                    raise ValueError(
                        f"{self.env_name(name)}={path} is not a readable file: point it at a "
                        f"PEM file"
                    )
        return self

    @model_validator(mode="after")
    def _auth_keys(self) -> Settings:
        check_auth_algorithms(
            self.auth_algorithms,
            jwks_url=self.auth_jwks_url,
            has_secret=self.auth_secret is not None,
        )
        return self

    @property
    def recall_redis(self) -> str:
        """The URL of the Redis that holds the recall index: its own, else the read-model's."""
        return self.recall_redis_url or self.redis_url

    @property
    def api_keys_path(self) -> Path:
        """Where the gateway's API keys are: `api_keys_file`, else in the state dir."""
        return self.api_keys_file or self.state_dir / "api-keys.json"

    @model_validator(mode="after")
    def _llm_prices_together(self) -> Settings:
        # One price alone would count half the cost and call it the cost.
        if (self.llm_price_input_per_mtok is None) != (self.llm_price_output_per_mtok is None):
            raise ValueError(
                "CHATLOG_LLM_PRICE_INPUT_PER_MTOK and CHATLOG_LLM_PRICE_OUTPUT_PER_MTOK go "
                "together: set both (0 for a side that is free), or neither"
            )
        return self

    @model_validator(mode="after")
    def _embedding_choice(self) -> Settings:
        if self.embedding_provider == "offline":
            for name in ("embedding_base_url", "embedding_api_key", "embedding_ca_file"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"{self.env_name(name)} is set, but the embedding provider is "
                        f"offline: set CHATLOG_EMBEDDING_PROVIDER=openai to use an endpoint, "
                        f"or unset it"
                    )
        self.embedding  # noqa: B018 - checks the model and its size
        return self

    @property
    def embedding(self) -> EmbeddingSpec:
        """The embedding model and the size of its vectors, defaults filled in."""
        return embedding_spec(
            self.embedding_provider, self.embedding_model, self.embedding_dimension
        )

    @model_validator(mode="after")
    def _redis_timeout_within_reads(self) -> Settings:
        if self.redis_timeout_s >= self.read_timeout_s:
            raise ValueError(
                f"CHATLOG_REDIS_TIMEOUT_S={self.redis_timeout_s:g} must be below "
                f"CHATLOG_READ_TIMEOUT_S={self.read_timeout_s:g}: one stalled Redis call "
                f"would otherwise outlast the read's own timeout"
            )
        return self

    @model_validator(mode="after")
    def _redis_cluster_url(self) -> Settings:
        # A cluster has database 0 only, and its client connects over TCP to find the nodes.
        if self.redis_cluster and (
            self.redis_url.startswith("unix://")
            or urlsplit(self.redis_url).path.strip("/") not in ("", "0")
        ):
            raise ValueError(
                f"CHATLOG_REDIS_CLUSTER=true needs CHATLOG_REDIS_URL to name one node of the "
                f"cluster as redis://host:port or rediss://host:port (database 0 only), not "
                f"{redacted_url(self.redis_url)!r}"
            )
        if self.redis_cluster and self.recall and self.recall_redis_url is None:
            # The open-source query engine searches one node's keys: an index on a
            # cluster would see a third of the turns on each master and answer partly.
            raise ValueError(
                "CHATLOG_RECALL=true with CHATLOG_REDIS_CLUSTER=true needs "
                "CHATLOG_RECALL_REDIS_URL: the recall index lives on one Redis with the query "
                "engine (Redis Stack or Redis 8, not a cluster); name it there"
            )
        return self

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of setting `field`."""
        return ENV_PREFIX + field.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``CHATLOG_*`` variables (default: `os.environ`); `overrides` win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        kafka: dict[str, str] = {}
        by_env = {cls.env_name(name): name for name in cls.model_fields if name != "kafka"}
        for key, raw in env.items():
            if not key.startswith(ENV_PREFIX):
                continue
            if key.startswith(_KAFKA_PASSTHROUGH):
                kafka[key.removeprefix(_KAFKA_PASSTHROUGH).lower().replace("_", ".")] = raw
            elif key in by_env:
                values[by_env[key]] = raw if raw != "" else None
            else:
                raise ConfigError(_unknown_message(key, by_env), setting=key)
        values = {k: v for k, v in values.items() if v is not None}
        if kafka:
            values["kafka"] = kafka
        values.update(overrides)
        _fill_from_local_stack(values)
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise _config_error(exc) from exc

    def __repr_args__(self) -> Any:
        # repr() and str() of a Settings land in logs and tracebacks: the same masking as
        # `describe` (SecretStr fields mask themselves).
        for name, value in super().__repr_args__():
            yield name, _shown(name or "", value)

    def describe(self) -> dict[str, Any]:
        """The settings as environment variables, secrets masked (`_shown`)."""
        shown: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "kafka":
                for prop, prop_value in _shown(name, value).items():
                    shown[_KAFKA_PASSTHROUGH + prop.replace(".", "_").upper()] = prop_value
            elif value and is_secret(name):
                shown[self.env_name(name)] = MASK
            elif value is None and name in _RETENTIONS:
                shown[self.env_name(name)] = FOREVER
            elif value is None and name in _RATES:
                shown[self.env_name(name)] = OFF
            elif name == "pii_patterns":  # as it is written: one entry a line
                shown[self.env_name(name)] = "\n".join(f"{k}={v}" for k, v in value.items())
            elif name == "pii_allow":
                shown[self.env_name(name)] = "\n".join(value)
            elif name == "auth_algorithms" and value is not None:
                shown[self.env_name(name)] = ",".join(value)
            else:
                shown[self.env_name(name)] = None if value is None else _shown(name, str(value))
        return shown


# librdkafka properties that have a setting of their own (the summarizer, on aiokafka,
# would not see them as passthrough properties).
_MEMBERSHIP_SETTINGS = {
    "group.instance.id": "CHATLOG_INSTANCE_ID",
    "session.timeout.ms": "CHATLOG_SESSION_TIMEOUT_S",
}


# Settings where None means "forever", which `describe` spells out (one has a default).
_RETENTIONS = {"retention", "dlq_retention", "audit_retention"}
# Settings where None means "no limit", shown as "off" (one has a default).
_RATES = {"rate_user", "rate_tenant"}


def _shown(name: str, value: Any) -> Any:
    """How setting (or Kafka property) `name` holding `value` may be shown: `MASK` for a
    secret, URL credentials masked in text (`chatlog.schemas.secrets` has the rule)."""
    if isinstance(value, SecretStr):
        return value  # its str and repr are masked already
    if value and is_secret(name):
        return MASK
    if isinstance(value, str):
        return redacted_url(value)
    if name == "kafka":  # librdkafka properties, each judged by its own name
        return {prop: _shown(prop, item) for prop, item in value.items()}
    return value


def _fill_from_local_stack(values: dict[str, Any]) -> None:
    """What is not set, from the local stack's file: its addresses and its master key."""
    wants_addresses = not ("kafka_bootstrap" in values and "redis_url" in values)
    wants_key = "master_key" not in values and "master_key_file" not in values
    if not (wants_addresses or wants_key):
        return
    state_dir = values.get("state_dir")
    local = read_addresses(state_dir=Path(state_dir) if state_dir else None)
    if local is None:
        return
    if wants_addresses:
        values.setdefault("kafka_bootstrap", local[Settings.env_name("kafka_bootstrap")])
        recall = local.get(Settings.env_name("recall_redis_url"))
        if "redis_url" not in values and recall and "recall_redis_url" not in values:
            # Only beside the stack's own read-model Redis: a read-model Redis set by
            # hand is not paired with the stack's recall Redis behind its back.
            values["recall_redis_url"] = recall
        values.setdefault("redis_url", local[Settings.env_name("redis_url")])
    key_file = local.get(Settings.env_name("master_key_file"))
    if wants_key and key_file:
        values["master_key_file"] = key_file


# JWT algorithms by the key that checks them. "none" is in neither: never accepted.
SHARED_SECRET_ALGORITHMS = ("HS256", "HS384", "HS512")
PUBLIC_KEY_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip


def check_auth_algorithms(
    algorithms: tuple[str, ...] | None, *, jwks_url: str | None, has_secret: bool
) -> tuple[str, ...]:
    """The JWT algorithms the gateway accepts (the default when `algorithms` is None);
    `ValueError` naming the setting to fix when they do not fit the key source.

    With a JWKS only public-key algorithms, and no shared secret at all: an HS256 key
    beside RSA keys lets a token signed with the *public* key as an HMAC secret pass
    (algorithm confusion). Without a JWKS only HS*: there is no public key to check with.
    """
    allowed: tuple[str, ...]
    default: tuple[str, ...]
    if jwks_url is None:
        allowed, default, source = SHARED_SECRET_ALGORITHMS, ("HS256",), "CHATLOG_AUTH_SECRET"
    else:
        if has_secret:
            raise ValueError(
                "CHATLOG_AUTH_SECRET and CHATLOG_AUTH_JWKS_URL are both set: with a JWKS the "
                "gateway accepts only the identity provider's signed tokens, and a shared "
                "secret beside it would invite algorithm confusion; unset CHATLOG_AUTH_SECRET"
            )
        if not jwks_url.lower().startswith(("https://", "http://")):
            raise ValueError(
                f"CHATLOG_AUTH_JWKS_URL={redacted_url(jwks_url)!r} must be an https:// URL"
            )
        if jwks_url.lower().startswith("http://") and not _is_loopback(jwks_url):
            raise ValueError(
                f"CHATLOG_AUTH_JWKS_URL={redacted_url(jwks_url)!r}: keys fetched over plain "
                f"http could be replaced on the way, and with them every token; use https:// "
                f"(http is allowed on the loopback interface only)"
            )
        allowed, default, source = PUBLIC_KEY_ALGORITHMS, ("RS256", "ES256"), "a JWKS"
    if algorithms is None:
        return default
    if not algorithms:
        raise ValueError("CHATLOG_AUTH_ALGORITHMS is empty: name at least one algorithm")
    for name in algorithms:
        if name not in allowed:
            if name.lower() == "none":
                raise ValueError(
                    "CHATLOG_AUTH_ALGORITHMS names 'none', which is never accepted: an "
                    "unsigned token would let anyone claim to be anyone"
                )
            raise ValueError(
                f"CHATLOG_AUTH_ALGORITHMS names {name!r}; with {source} the gateway accepts "
                f"{', '.join(allowed)}"
            )
    return algorithms


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _unknown_message(key: str, known: Mapping[str, str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"did you mean {close[0]}?" if close else f"known settings: {', '.join(sorted(known))}"
    return f"unknown setting {key}: {hint} (Kafka properties go in {_KAFKA_PASSTHROUGH}<NAME>)"


def _config_error(exc: ValidationError) -> ConfigError:
    problems = []
    for error in exc.errors(include_url=False):
        if not error["loc"]:  # a rule between settings: its message names them
            problems.append(error["msg"].removeprefix("Value error, "))
            continue
        field = str(error["loc"][0])
        if field == "kafka":  # the passthrough properties hold secrets: never echo them
            problems.append(f"{_KAFKA_PASSTHROUGH}*: {error['msg']}")
            continue
        name = Settings.env_name(field)
        problems.append(f"{name}={_shown(field, error.get('input'))!r}: {error['msg']}")
    return ConfigError("invalid settings: " + "; ".join(problems), setting=problems[0])
