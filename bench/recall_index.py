"""``python -m bench.recall_index``: the recall index's cost, HNSW beside FLAT.

    python -m bench.recall_index                       # 10,000 vectors of 384 and of 64 numbers
    python -m bench.recall_index --vectors 100000 --dims 384 --algorithms FLAT --users 100

For each algorithm and dimension it fills one fresh index (random unit vectors spread
over 100 users of one tenant, written in batches through `RedisVectorIndex.apply`, as an
indexer would), then reports the index's memory per 1,000 vectors (FT.INFO's vector
index and the documents' MEMORY USAGE, sampled), and the latency of a search as the
recall API makes it: the 5 nearest turns of one user (p50 and p99 over 1,000 searches,
one client, wall time around the call). Each is run with the vectors spread over 100
users, and with one user holding them all (the worst case of the filter). The Redis is
``CHATLOG_RECALL_REDIS_URL``, else the local stack's; everything is written under
``bench-recall:<run>`` and dropped at the end.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
import uuid

import redis

from chatlog.projections.recall import ALGORITHMS, EmbeddingModel, IndexedTurn
from chatlog.projections.redis_vectors import RedisVectorIndex
from chatlog.projections.view import Message
from chatlog.settings import Settings

_USERS = 100
_BATCH = 500
_SEARCHES = 1000
_SAMPLED_DOCS = 200


def _unit(rng: random.Random, dimension: int) -> list[float]:
    vector = [rng.gauss(0.0, 1.0) for _ in range(dimension)]
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector]


def _turn(n: int, user: str, vector: list[float]) -> IndexedTurn:
    # A message about the size of a sealed chat turn as the read-model stores it.
    message = Message(
        offset=n, message_id=f"m{n}", role="user", content="x" * 300, occurred_at_ms=n
    )
    return IndexedTurn("acme", user, f"s-{user}", n % 6, message, vector)


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


def run(
    client: redis.Redis, *, vectors: int, dimension: int, algorithm: str, users: int = _USERS
) -> dict[str, float]:
    """Fill an index of `vectors` over `users`, then measure it."""
    rng = random.Random(7)
    model = EmbeddingModel(f"bench-{dimension}", dimension)
    prefix = f"bench-recall:{uuid.uuid4().hex[:8]}"
    index = RedisVectorIndex(
        client,
        prefix=prefix,
        generation="g1",
        model=model,
        algorithm=algorithm,  # type: ignore[arg-type]
    )
    index.ensure()
    try:
        started = time.perf_counter()
        for start in range(0, vectors, _BATCH):
            batch = [
                _turn(n, f"u{n % users}", _unit(rng, dimension))
                for n in range(start, min(start + _BATCH, vectors))
            ]
            index.apply(batch)
        load_s = time.perf_counter() - started
        info = index.info()
        vector_mb = float(info.get("vector_index_sz_mb", 0.0))
        sampled = [
            int(client.memory_usage(index.keys.recall_document(f"s-u{n % users}", f"m{n}")) or 0)
            for n in rng.sample(range(vectors), min(_SAMPLED_DOCS, vectors))
        ]
        doc_bytes = statistics.mean(sampled)
        per_thousand_kb = (vector_mb * 1024 * 1024 / vectors + doc_bytes) * 1000 / 1024
        result = {
            "load_per_s": vectors / load_s,
            "vector_index_kb_per_1k": vector_mb * 1024 * 1000 / vectors,
            "document_kb_per_1k": doc_bytes * 1000 / 1024,
            "total_kb_per_1k": per_thousand_kb,
        }
        times = []
        for _ in range(_SEARCHES):
            query = _unit(rng, dimension)
            t0 = time.perf_counter()
            hits = index.search(query, tenant="acme", user_id=f"u{rng.randrange(users)}", k=5)
            times.append((time.perf_counter() - t0) * 1000)
            assert len(hits) == 5, hits
        result["p50_ms"], result["p99_ms"] = _percentiles(times)
        return result
    finally:
        index.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--vectors", type=int, default=10_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[384, 64])
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    parser.add_argument(
        "--users", type=int, nargs="+", default=[_USERS, 1], help="users the vectors belong to"
    )
    args = parser.parse_args()
    client = redis.Redis.from_url(Settings.from_env().recall_redis)
    print(
        f"{'algorithm':9} {'dim':>4} {'vectors':>8} {'users':>5} {'load/s':>8} "
        f"{'index KB/1k':>11} {'docs KB/1k':>10} {'total KB/1k':>11} {'p50 ms':>7} "
        f"{'p99 ms':>7}"
    )
    for dimension in args.dims:
        for algorithm in args.algorithms:
            for users in args.users:
                r = run(
                    client,
                    vectors=args.vectors,
                    dimension=dimension,
                    algorithm=algorithm,
                    users=users,
                )
                print(
                    f"{algorithm:9} {dimension:>4} {args.vectors:>8} {users:>5} "
                    f"{r['load_per_s']:>8.0f} {r['vector_index_kb_per_1k']:>11.0f} "
                    f"{r['document_kb_per_1k']:>10.0f} {r['total_kb_per_1k']:>11.0f} "
                    f"{r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
