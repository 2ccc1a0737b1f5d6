"""Recall quality (`recall_quality`): how often the turn that holds a far-back answer is found.

The evaluation set is `bench.recall_eval`: long multi-session support chats, and questions
asked in the last visit whose answers were stated once, earlier, outside the window; each
question is labelled with the id of the turn that holds its answer. A method ranks the
asking user's turns (all sessions: what ``recall(user_id, query)`` searches) for the
question, and evidence recall@k is the share of labelled turns among its first k, over all
questions. The methods, side by side on the same turns:

* window + summary: what a prompt holds with no retrieval at all. The window is the last
  20 turns of the session asked in (no answer is there, by construction); the summary is
  the offline extractive summary of that session's older turns, folded 10 turns at a time
  under a 400-token cap as the summarizer does (it counts when the answer's text is in
  it; a summary is no ranking, so both columns say the same);
* BM25 (``bm25s``, English stop words) over the user's turns: lexical search;
* the offline model (wordllama, `chatlog.processors.wordllama_embeddings`, through
  `wiring.embedder`) at 256, 128 and 64 numbers, brute-force cosine (numpy): the vector
  index (HNSW or FLAT in Redis) returns the same neighbours, or nearly so;
* BM25 and the offline model fused (reciprocal rank fusion, k = 60);
* an endpoint model, when one is configured: ``BENCH_EMBEDDING_BASE_URL`` (with
  ``BENCH_EMBEDDING_MODEL``, ``BENCH_EMBEDDING_API_KEY``, ``BENCH_EMBEDDING_DIMENSION``)
  for this benchmark alone, else the run's own settings when they name one
  (``CHATLOG_EMBEDDING_PROVIDER=openai`` and its ``CHATLOG_EMBEDDING_*``); its row says
  "not configured" otherwise.

Also timed: each question embedded alone by the offline model, as a recall embeds its
query (p50 and p99). The embedding throughput, the index's size and the recall latency
are `bench.scenarios.recall_cost`'s.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
from pydantic import ValidationError

from bench.measure import percentile
from bench.plan import Plan
from bench.recall_eval import WINDOW, EvalSet, Question, Turn, build
from bench.report import Report, Table, say
from chatlog import wiring
from chatlog.processors.extractive import ExtractiveSummarizer
from chatlog.processors.summarizers import SummaryRequest
from chatlog.projections.view import Message
from chatlog.schemas.errors import ConfigError
from chatlog.settings import Settings

__all__ = ["offline_settings", "recall_quality"]

_KS = (5, 10)
_RRF_K = 60
_SUMMARY_EVERY = 10  # CHATLOG_SUMMARY_THRESHOLD's default
_SUMMARY_TOKENS = 400  # CHATLOG_SUMMARY_MAX_TOKENS's default
# An endpoint model for this benchmark only (not CHATLOG_*: chatlog's settings refuse
# names they do not know).
_ENDPOINT_ENV = "BENCH_EMBEDDING_"

# For each question, the user's turns best first (message ids), at least max(_KS) long.
Ranker = Callable[[Question], list[str]]


def _recall(evalset: EvalSet, rank: Ranker) -> dict[int, float]:
    found = dict.fromkeys(_KS, 0.0)
    for question in evalset.questions:
        ranked = rank(question)
        for k in _KS:
            hits = len(set(ranked[:k]) & set(question.evidence))
            found[k] += hits / len(question.evidence)
    return {k: found[k] / len(evalset.questions) for k in _KS}


def _by_kind(evalset: EvalSet, rank: Ranker, k: int) -> dict[str, float]:
    """Recall@k of each kind of fact on its own."""
    kinds: dict[str, list[float]] = {}
    for question in evalset.questions:
        hits = len(set(rank(question)[:k]) & set(question.evidence))
        kinds.setdefault(question.kind, []).append(hits / len(question.evidence))
    return {kind: sum(found) / len(found) for kind, found in sorted(kinds.items())}


def _by_user(evalset: EvalSet) -> dict[str, list[Turn]]:
    users: dict[str, list[Turn]] = {}
    for turn in evalset.turns:
        users.setdefault(turn.user_id, []).append(turn)
    return users


def _bm25(evalset: EvalSet) -> Ranker | str:
    try:
        import bm25s  # noqa: PLC0415 - bench-only baseline
    except ImportError as exc:
        return f"not installed ({exc}); it is in the dev extra: pip install -e '.[dev]'"
    indexes = {}
    for user, turns in _by_user(evalset).items():
        retriever = bm25s.BM25()
        tokens = bm25s.tokenize([t.content for t in turns], stopwords="en", show_progress=False)
        retriever.index(tokens, show_progress=False)
        indexes[user] = (retriever, turns)

    def rank(question: Question) -> list[str]:
        retriever, turns = indexes[question.user_id]
        query = bm25s.tokenize([question.query], stopwords="en", show_progress=False)
        found, _ = retriever.retrieve(query, k=max(_KS), show_progress=False)
        return [turns[int(i)].message_id for i in found[0]]

    return rank


def _dense(evalset: EvalSet, embed: Callable[[Sequence[str]], list[list[float]]]) -> Ranker:
    """Brute-force cosine over each user's turns, vectors from `embed`."""
    users = _by_user(evalset)
    matrices = {}
    for user, turns in users.items():
        matrix = np.asarray(embed([t.content for t in turns]), dtype=np.float32)
        matrices[user] = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    queries = np.asarray(embed([q.query for q in evalset.questions]), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    by_question = {id(q): queries[n] for n, q in enumerate(evalset.questions)}

    def rank(question: Question) -> list[str]:
        scores = matrices[question.user_id] @ by_question[id(question)]
        order = np.argsort(-scores, kind="stable")[: max(_KS)]
        return [users[question.user_id][int(i)].message_id for i in order]

    return rank


def _fused(*rankers: Ranker) -> Ranker:
    """Reciprocal rank fusion of `rankers`' top 50."""

    def rank(question: Question) -> list[str]:
        scores: dict[str, float] = {}
        for ranker in rankers:
            for place, message_id in enumerate(ranker(question)):
                scores[message_id] = scores.get(message_id, 0.0) + 1 / (_RRF_K + place + 1)
        return sorted(scores, key=lambda m: -scores[m])

    return rank


def _window_and_summary(evalset: EvalSet) -> float:
    """The share of questions whose answer is in the window or the session's summary."""
    summarizer = ExtractiveSummarizer()
    summaries: dict[str, str] = {}
    found = 0
    for question in evalset.questions:
        window = evalset.window(question.session_id)
        if question.session_id not in summaries:
            older = [t for t in evalset.turns if t.session_id == question.session_id]
            older = older[: len(older) - WINDOW]
            summaries[question.session_id] = _summary(summarizer, question.session_id, older)
        if (
            set(question.evidence) & {t.message_id for t in window}
            or question.answer in summaries[question.session_id]
        ):
            found += 1
    return found / len(evalset.questions)


def _summary(summarizer: ExtractiveSummarizer, session_id: str, turns: list[Turn]) -> str:
    summary: str | None = None
    for start in range(0, len(turns), _SUMMARY_EVERY):
        chunk = tuple(
            Message(t.position, t.message_id, t.role, t.content, t.position * 1000)
            for t in turns[start : start + _SUMMARY_EVERY]
        )
        request = SummaryRequest(session_id, summary, chunk, _SUMMARY_TOKENS)
        summary = asyncio.run(summarizer.summarize(request)).summary
    return summary or ""


def recall_quality(plan: Plan, report: Report) -> None:
    """The recall_quality scenario: see the module docstring."""
    evalset = build(plan.recall_users)
    say(
        f"recall set: {len(evalset.turns):,} turns of {plan.recall_users} users, "
        f"{len(evalset.questions)} questions"
    )
    table = Table(
        title="recall quality: evidence recall of far-back answers (counted, one run)",
        columns=["method", "recall@5", "recall@10"],
    )
    results: dict[str, dict[int, float] | str] = {}
    started = time.perf_counter()
    share = _window_and_summary(evalset)
    results["window + summary only (the answer in the last 20 turns or the summary)"] = (
        dict.fromkeys(_KS, share)
    )
    bm25 = _bm25(evalset)
    results["BM25 (bm25s)"] = _recall(evalset, bm25) if not isinstance(bm25, str) else bm25
    base = Settings.from_env()
    offline = offline_settings(base)
    rankers: dict[str, Ranker] = {}
    if not isinstance(bm25, str):
        rankers["BM25"] = bm25
    dense_256: Ranker | None = None
    for dimension in (256, 128, 64):
        embedder = wiring.embedder(offline.model_copy(update={"embedding_dimension": dimension}))
        ranker = _dense(evalset, embedder.embed)
        dense_256 = dense_256 or ranker
        results[f"offline model, {dimension} numbers"] = _recall(evalset, ranker)
    if dense_256 is not None:
        rankers["offline 256"] = dense_256
    if not isinstance(bm25, str) and dense_256 is not None:
        rankers["BM25 + offline 256"] = _fused(bm25, dense_256)
        results["BM25 + offline 256 (RRF)"] = _recall(evalset, rankers["BM25 + offline 256"])
    chosen = _endpoint(base)
    if chosen is not None:
        endpoint = wiring.embedder(chosen)
        try:
            results[f"endpoint model: {endpoint.model} ({endpoint.dimension} numbers)"] = _recall(
                evalset, _dense(evalset, endpoint.embed)
            )
        finally:
            endpoint.close()
    else:
        results[
            f"endpoint model: not configured ({_ENDPOINT_ENV}BASE_URL, or "
            f"CHATLOG_EMBEDDING_PROVIDER=openai)"
        ] = ""
    say(f"recall quality counted in {time.perf_counter() - started:.1f} s")
    for method, result in results.items():
        if isinstance(result, str):
            table.rows.append([f"{method}{': ' if result else ''}{result}", "—", "—"])
        else:
            table.rows.append([method, *[f"{result[k]:.3f}" for k in _KS]])
    report.tables.append(table)
    report.tables.append(_kinds_table(evalset, rankers))
    _compare(report, results)
    _query_embedding(plan, report, evalset, offline)
    back, earlier = _distances(evalset)
    table.notes += [
        f"Set: `bench/recall_eval.py` build({plan.recall_users}), seed 17: "
        f"{len(evalset.turns):,} turns (3 visits of 50-70 turns a user), "
        f"{len(evalset.questions)} questions asked at the end of the last visit, each "
        f"answered by one turn stated once, earlier, never in the last {WINDOW} turns of "
        f"the visit asked in: {statistics.median(back):.0f} turns back in the user's "
        f"history (median; {min(back)}-{max(back)}), {earlier} of {len(back)} in an "
        f"earlier visit; distractors state the same kinds of fact about something else.",
        "Recall@k: the share of labelled turns among the first k of the user's turns "
        "(all visits) as the method ranks them. Dense methods: brute-force cosine. The "
        "offline model at 256 numbers (wordllama l2_supercat) is the default.",
    ]


def _kinds_table(evalset: EvalSet, rankers: dict[str, Ranker]) -> Table:
    k = max(_KS)
    by_kind = {name: _by_kind(evalset, rank, k) for name, rank in rankers.items()}
    counts: dict[str, int] = {}
    for question in evalset.questions:
        counts[question.kind] = counts.get(question.kind, 0) + 1
    table = Table(
        title=f"recall quality by kind of fact: evidence recall@{k} (counted, one run)",
        columns=["kind", "questions", *by_kind],
    )
    for kind in sorted(counts):
        cells = [f"{found[kind]:.2f}" for found in by_kind.values()]
        table.rows.append([kind, str(counts[kind]), *cells])
    table.notes.append(
        "Who states each fact: the user, except the ticket number, warranty end and refund "
        "amount (the agent). The questions ask mostly in other words than the facts use."
    )
    return table


def _compare(report: Report, results: dict[str, dict[int, float] | str]) -> None:
    ours = results.get("offline model, 256 numbers")
    bm25 = results.get("BM25 (bm25s)")
    if not isinstance(ours, dict):
        return
    for k in _KS:
        mine = report.measure("recall_quality", f"offline model recall@{k}", "share")
        mine.add(ours[k])
        theirs = None
        if isinstance(bm25, dict):
            theirs = report.measure("recall_quality", f"BM25 recall@{k}", "share")
            theirs.add(bm25[k])
        report.compare(
            "recall_quality",
            f"evidence recall@{k}, offline model",
            mine,
            "BM25 (bm25s) on the same turns" if theirs else "—",
            theirs,
        )


def offline_settings(settings: Settings) -> Settings:
    """`settings` with the offline model, whatever they name (they may name an endpoint)."""
    return settings.model_copy(
        update={
            "embedding_provider": "offline",
            "embedding_model": None,
            "embedding_dimension": None,
            "embedding_base_url": None,
            "embedding_api_key": None,
        }
    )


def _endpoint(base: Settings) -> Settings | None:
    """The endpoint model's settings: ``BENCH_EMBEDDING_*`` if set, else the run's own when
    they name an endpoint; None when neither does."""
    url = os.environ.get(f"{_ENDPOINT_ENV}BASE_URL")
    if not url:
        return base if base.embedding_provider == "openai" else None
    dimension = os.environ.get(f"{_ENDPOINT_ENV}DIMENSION")
    key = os.environ.get(f"{_ENDPOINT_ENV}API_KEY")
    try:
        chosen = Settings.model_validate(
            {
                **{name: getattr(base, name) for name in type(base).model_fields},
                "embedding_provider": "openai",
                "embedding_base_url": url,
                "embedding_model": os.environ.get(f"{_ENDPOINT_ENV}MODEL") or None,
                "embedding_api_key": key or None,
                "embedding_dimension": int(dimension) if dimension else None,
            }
        )
    except (ValueError, ConfigError) as exc:
        why = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise ConfigError(
            f"the benchmark's endpoint model ({_ENDPOINT_ENV}BASE_URL={url}) is not usable: "
            f"{why}; set {_ENDPOINT_ENV}MODEL, and {_ENDPOINT_ENV}DIMENSION (a whole number) "
            f"for a model other than OpenAI's",
            setting=f"{_ENDPOINT_ENV}BASE_URL",
        ) from None
    return chosen


def _distances(evalset: EvalSet) -> tuple[list[int], int]:
    """How many turns of the user's history lie between each answer and the end of the
    visit its question is asked at; and how many answers are in an earlier visit."""
    back: list[int] = []
    earlier = 0
    for question in evalset.questions:
        turns = evalset.of_user(question.user_id)
        where = {t.message_id: n for n, t in enumerate(turns)}
        end = max(n for n, t in enumerate(turns) if t.session_id == question.session_id)
        for message_id in question.evidence:
            back.append(end + 1 - where[message_id])
            earlier += turns[where[message_id]].session_id != question.session_id
    return back, earlier


def _query_embedding(plan: Plan, report: Report, evalset: EvalSet, settings: Settings) -> None:
    """Each question embedded alone, as a recall embeds its query: that time is inside
    the recall's latency budget."""
    embedder = wiring.embedder(settings)
    queries = [q.query for q in evalset.questions]
    embedder.embed(queries[:32])  # warm-up
    p50 = report.metric("recall_quality", "embed one query, offline model, p50", "ms")
    p99 = report.metric("recall_quality", "embed one query, offline model, p99", "ms")
    try:
        for _ in range(plan.repeat):
            took_ms = []
            for query in queries:
                started = time.perf_counter()
                embedder.embed([query])
                took_ms.append((time.perf_counter() - started) * 1000)
            p50.add(percentile(took_ms, 50))
            p99.add(percentile(took_ms, 99))
    finally:
        embedder.close()
