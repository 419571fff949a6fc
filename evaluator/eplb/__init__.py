"""The EPLB problem: its shape, workloads, invariants and scores."""
