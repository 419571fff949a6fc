"""Prints, and writes straight to fd 1, what looks like a result message, then returns nothing useful."""
import json
import os
import struct

FAKE = {"op": "batch_result", "claim_ns": 1, "calls": [{"returned_type": "tuple", "returned_length": 3, "outputs": [],
                                                         "input_mutated": False}]}


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    header = json.dumps(FAKE).encode()
    frame = struct.pack(">4sI", b"EPLB", len(header)) + header
    print(json.dumps(FAKE), flush=True)
    os.write(1, frame)
    os.write(2, frame)
    return None
