"""What the embedder has done since it started: the one place where it counts, read by
its log lines, its metrics (`chatlog.prom_metrics.EmbedderCollector`) and its health
checks. The embedding model's own counts (calls, failures, refusals of the open circuit)
are the `ResilientEmbedder`'s (`chatlog.processors.embeddings.EmbeddingStats`)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from chatlog.processors.measures import Histogram
from chatlog.processors.projector_stats import LIVENESS_BOUND_S
from chatlog.processors.recall_indexing import IndexWork

__all__ = ["SKIP_REASONS", "EmbedderStats"]

# Why a record or a turn was not written to the index (each counted, none silent):
# undecodable (the projector dead-letters it), undecryptable, owner_erased (the event's
# key is destroyed), not_a_turn (tool and system messages, turns with no text),
# user_erased (the index refused it: the user's erasure mark was set meanwhile),
# other_owner (an event in a session someone else owns, as the read-model holds it; or
# a turn or a redaction the index refused as naming another tenant's or user's document).
SKIP_REASONS = (
    "undecodable",
    "undecryptable",
    "owner_erased",
    "not_a_turn",
    "user_erased",
    "other_owner",
)


@dataclass(slots=True)
class EmbedderStats:
    """Running totals since start, and the embedder's present state (lag, beat)."""

    batches: int = 0
    records: int = 0  # consumed and finished: applied to the index, offsets stored
    embedded: int = 0  # turns embedded
    written: int = 0  # turns written to the index
    deleted: int = 0  # vectors deleted by redactions
    erased: int = 0  # vectors deleted by session erasures (every generation)
    skipped: Counter[str] = field(default_factory=Counter)
    # The recall Redis or the embeddings endpoint failing: how many times it started to,
    # and how many attempts failed in all (of which `redis_errors` were Redis's).
    outages: int = 0
    retries: int = 0
    redis_errors: int = 0
    index_lost: int = 0  # a lost recall index found (the embedder then stops)
    batch_seconds: Histogram = field(default_factory=Histogram)  # a whole batch, retries too
    embed_seconds: Histogram = field(default_factory=Histogram)  # its one embedding call
    # Records behind the partition's end, per assigned partition, as of `lag_at`.
    lag: dict[int, int] = field(default_factory=dict)
    lag_at: float = 0.0
    beat_at: float = field(default_factory=time.monotonic)

    def __repr__(self) -> str:
        # The log line: the totals, not the histograms and the state.
        shown = (
            "batches", "records", "embedded", "written", "deleted", "erased", "outages",
            "retries", "redis_errors",
        )  # fmt: skip
        totals = ", ".join(f"{n}={getattr(self, n)}" for n in shown)
        return f"EmbedderStats({totals}, skipped={dict(self.skipped)})"

    def add(
        self,
        work: IndexWork,
        *,
        written: int,
        refused: int,
        deleted: int,
        erased: int,
        foreign: int,
        seconds: float,
    ) -> None:
        """Count one batch applied to the index: `written` turns written, `refused` of an
        erased user, `deleted` by redactions, `erased` by session erasures, `foreign`
        upserts and deletions refused as another user's document."""
        self.batches += 1
        self.records += work.records
        self.embedded += len(work.upserts)
        self.written += written
        self.deleted += deleted
        self.erased += erased
        self.skipped.update(
            {
                "undecodable": work.undecodable,
                "undecryptable": work.undecryptable,
                "owner_erased": work.erased,
                "not_a_turn": work.not_embedded,
                "user_erased": refused,
                "other_owner": foreign,
            }
        )
        self.batch_seconds.observe(seconds)

    def beat(self) -> None:
        """The loop turned (liveness)."""
        self.beat_at = time.monotonic()

    def alive(self, now: float, *, bound_s: float = LIVENESS_BOUND_S) -> bool:
        """Whether the loop turned within `bound_s` of `now` (monotonic)."""
        return now - self.beat_at < bound_s
