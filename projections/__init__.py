"""Projections: the pure read-model (`evolve`) and its Redis adapter."""
