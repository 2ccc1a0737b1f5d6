"""What chatlog does differently on a Redis Cluster: slots, epoch stamps, scripts in pipelines.

What changes on a cluster? One Lua call, and one MULTI, may only touch keys of one hash
slot. A session's keys share its tag (`chatlog.projections.keys`), so everything that
touches one session is still one atomic call. What the single-node code checks in the
same call from other slots is moved next to the session, or done as a separate step:

* The generation's epoch (`chatlog.projections.epochs`) is copied into every slot: an
  *epoch stamp* ``<prefix>:<generation>:epoch:{<tag of slot s>}`` for each of the 16384
  slots, holding the epoch's value. A write into a session checks the stamp of the
  session's slot in the same call, and a read reads it in the same MULTI. A master that
  restarts empty loses the stamps of its slots with their views, so the writes and reads
  of exactly those slots refuse (`DataLoss`, `ReadModelLost`), as the single epoch does
  on one node. A slot that migrates takes its stamp along.
* The erased mark is in the user's slot: the projector writes, then reads the marks of
  the owners it wrote, and deletes what it wrote for an owner found erased (see
  `chatlog.projections.redis_store`). The erasure sets the mark before its SCAN, so a
  write is either seen by the SCAN or sees the mark.
* A session's claim and its owner's count of sessions are in two slots: the count is
  taken first, in the user's slot, which is where the cap is decided, then the claim
  (`chatlog.projections.redis_claims`).
* A progress mark going back (an older snapshot restored under a running projector) is
  not checked by each session's write, as it is on one node: the marks are in a slot of
  their own. The projector finds it when it starts (`chatlog.projections.epochs`).
* Everything over many keys (the deletion of a generation, an erasure's pages, the load
  of a batch's sessions) goes through redis-py's cluster pipeline, which splits the
  commands by node; SCAN runs on every master (`RedisCluster.scan_iter`).

Scripts in a cluster pipeline are sent as EVALSHA with no load step (redis-py loads a
script for a plain pipeline, not a cluster one), so `execute` loads them on every
master and runs the pipeline again when a node answers NOSCRIPT (a master restarted).
A plain pipeline is run the same way, rather than asking first (SCRIPT EXISTS, a
round trip per pipeline).
Every script chatlog pipelines is idempotent (offset-guarded, ZADD GT, ZREM), so
running one twice changes nothing.
"""

from __future__ import annotations

import binascii
import functools
from collections.abc import Callable, Iterable
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.commands.core import Script

from chatlog.projections.keys import KeySpace

__all__ = [
    "SLOTS",
    "execute",
    "is_cluster",
    "slot_of",
    "stamp",
    "stamps",
    "write_stamps",
]

SLOTS = 16384


def is_cluster(client: object) -> bool:
    """Whether `client` (sync or asyncio) is redis-py's Redis Cluster client."""
    return isinstance(client, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster)


def slot_of(key: str) -> int:
    """The hash slot of `key` (CRC16 of its tag, or of the whole key without one)."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key.encode(), 0) % SLOTS


@functools.cache
def _tags() -> tuple[str, ...]:
    """For each slot, a short tag that hashes to it (the first hex number that does).

    Found once per process, in about 0.3 s, by counting until every slot has one.
    """
    found: dict[int, str] = {}
    n = 0
    while len(found) < SLOTS:
        tag = format(n, "x")
        found.setdefault(binascii.crc_hqx(tag.encode(), 0) % SLOTS, tag)
        n += 1
    return tuple(found[slot] for slot in range(SLOTS))


def stamp(keys: KeySpace, near: str) -> str:
    """The epoch stamp of the slot of key `near`, in the generation `keys` names."""
    return f"{keys.epoch}:{{{_tags()[slot_of(near)]}}}"


def stamps(keys: KeySpace) -> list[str]:
    """Every epoch stamp of the generation `keys` names, one per slot."""
    return [f"{keys.epoch}:{{{tag}}}" for tag in _tags()]


def write_stamps(client: Any, keys: KeySpace, value: str, *, only_existing: bool = False) -> None:
    """Set every epoch stamp of the generation to `value` (the epoch's own value, or its
    lost mark); with `only_existing`, only the stamps that are there (a slot that lost its
    stamp stays lost, and a generation never created gets none)."""
    names = stamps(keys)
    for start in range(0, len(names), 2048):
        pipe = client.pipeline(transaction=False)
        for name in names[start : start + 2048]:
            pipe.set(name, value, xx=only_existing)
        pipe.execute()


def execute(client: Any, queue: Callable[[Any], None], scripts: Iterable[Script] = ()) -> list[Any]:
    """Queue commands on a fresh pipeline of `client` (`queue(pipe)`) and run it, its
    scripts sent by hash alone; if a node lacked one, load `scripts` (and those queued)
    on every master and run it again."""
    pipe = client.pipeline(transaction=False)
    queue(pipe)
    # A plain pipeline would first ask whether its scripts are loaded (SCRIPT EXISTS): a
    # round trip more for every batch the projector writes. A node that lacks one
    # answers NOSCRIPT instead, as on a cluster, and the run below loads it.
    queued = getattr(pipe, "scripts", None)
    needed = [*scripts, *(queued or ())]
    if queued:
        queued.clear()
    try:
        return list(pipe.execute())
    except redis.exceptions.NoScriptError:
        pass
    for script in dict.fromkeys(needed):
        script.sha = client.script_load(script.script)
    pipe = client.pipeline(transaction=False)
    queue(pipe)
    return list(pipe.execute())
