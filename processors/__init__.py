"""Processors: the long-running workers (projector, summarizer, replay)."""
