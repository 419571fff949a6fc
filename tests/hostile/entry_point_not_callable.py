"""Binds the entry point's name to a number."""

rebalance_experts = 42
