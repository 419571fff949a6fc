"""Adapters for optimisation loops: each turns a `Result` into the shape one loop reads."""
