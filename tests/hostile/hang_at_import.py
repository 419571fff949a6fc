"""Never finishes importing."""
while True:
    pass


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    raise AssertionError("unreachable")
