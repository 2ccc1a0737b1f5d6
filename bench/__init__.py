"""chatlog's benchmark: how fast the projection runs and how soon a write can be read.

What is measured, and why these numbers? The projection issue set three targets, and
each scenario here measures one of them against the real local stack (Kafka and Redis
on loopback), the way a deployment runs it:

* projection throughput: a topic pre-filled with chat events, drained by a projector in
  its own process into a fresh read-model; beside it, the pure core alone (decode and
  fold, no I/O) and the core writing to Redis without Kafka, to show where time goes;
* publish-to-visible latency: events sent at a steady rate while a sample of them is
  read back with ``context(after=position)``, the read-your-writes path of a chat back end;
* context read latency: ``ChatLog.context`` on sessions of 20 and 200 stored messages.

Numbers are reported as the median and range of a few repetitions after a warm-up, in a
Markdown table; they are never asserted (the machine is small and shared). Run it with
``make bench`` or ``python -m bench --quick``; see ``bench/README.md``.
"""
