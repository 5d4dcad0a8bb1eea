"""Benchmarks and oracles: a plain per-patient baseline of the outcomes method and a synthetic CGM generator."""
