"""The benchmark's scenarios, one module each, each filling its rows of the report.

Each module's docstring says what it measures and what it is measured beside; each has one
entry point taking the stack, the plan and the report (`bench.__main__` runs them):

* `append` (`append`): messages a second, batched and one at a time, beside LangChain's
  history, a plain Redis list and Kafka's ProducerPerformance;
* `reads` (`context_reads`): context reads of sessions of 20, 100 and 1,000 messages,
  beside LangChain's history and a plain Redis list;
* `memory` (`redis_memory`, run by `reads` on its sessions): the Redis memory each store
  keeps for a 1,000-message session;
* `latency` (`visibility`): publish-to-visible at three steady rates, beside Kafka's
  EndToEndLatency;
* `projection` (`projection`): a projector process draining a backlog, beside Kafka's
  ConsumerPerformance; `projection_core` (`projection_core`) splits its time per event;
* `summary_cost` (`summary_cost`): LLM calls and prompt tokens, beside LangChain's
  summary-buffer memory and a naive re-summarizer;
* `summary_throughput` (`summary_throughput`): sessions summarized a second, beside the
  ideal rate;
* `replay` (`replay`): `chatlog replay` rebuilding the read-model, beside
  ConsumerPerformance and a bare Python consumer.
* `checkpoints` (`checkpoints`): LangGraph checkpoints, `ChatlogCheckpointSaver`'s put and
  get_tuple beside `InMemorySaver` and langgraph-checkpoint-redis's `RedisSaver`.

What they stand on is shared, one module each: `bench.plan` (sizes), `bench.infra` (the
stack, topics, the projector process, clean-up), `bench.workload` (the traffic),
`bench.measure` (percentiles, CPU, a quiet heap), `bench.report` (the tables),
`bench.kafka_tools` (Kafka's tools), `bench.peers` (the peers), `bench.engine` (the
summary scenarios' engine driving).
"""
