"""Appended to a program (after a line setting LAYERS_PER_CHUNK): the same plans, made for a few layers at a time.
Each chunk costs the launches the whole problem does, so a launch-bound program takes as many times as long as
there are chunks. How `bench aa` makes its slower speed classes."""

_plan_all_layers = rebalance_experts


def rebalance_experts(weight: torch.Tensor, num_replicas: int, num_groups: int, num_nodes: int,
                      num_gpus: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    chunks = [_plan_all_layers(chunk, num_replicas, num_groups, num_nodes, num_gpus)
              for chunk in weight.split(LAYERS_PER_CHUNK)]
    return tuple(torch.cat(parts) for parts in zip(*chunks))
