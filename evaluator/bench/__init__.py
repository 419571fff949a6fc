"""Benchmarks of the evaluator's own work (`python -m evaluator bench ...`)."""
