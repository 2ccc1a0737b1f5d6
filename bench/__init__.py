"""chatlog's benchmark: what chatlog costs per message and how soon a prompt is ready.

What is measured, and against what? Each scenario runs against the real local stack
(Kafka and Redis on loopback), the way a deployment runs it, and puts chatlog beside
what a chat app would use instead (LangChain's `RedisChatMessageHistory`, a plain Redis
list written by hand; `bench.peers`) and beside the limits of the broker on the same
machine (Kafka's own ProducerPerformance, EndToEndLatency and ConsumerPerformance;
`bench.kafka_tools`):

* append: messages a second, batched and one at a time;
* context reads of sessions of 20, 100 and 1,000 messages, and the Redis memory each
  store keeps for one;
* publish-to-visible latency at three steady rates;
* projection and replay throughput, and their processes' peak memory;
* what rolling summaries cost and how fast they are made.

Each scenario is a module of `bench.scenarios`; what they stand on is shared, one module
each (see `bench.scenarios` and the layout in ``bench/README.md``).

Numbers are reported as the median and range of a few repetitions after a warm-up, in a
Markdown table with the peer in the next column and the ratio, and a latency chart; they
are never asserted (the machine is small and shared). Run it with ``make bench``,
``python -m bench --quick``; see ``bench/README.md``.
"""
