"""Returns the seed's plan wrapped in a tensor subclass, plus a bfloat16 tensor and a numpy array."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "seeds"))
import eplb  # noqa: E402


class PlanTensor(torch.Tensor):
    pass


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    phy2log, log2phy, logcnt = eplb.rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus)
    return phy2log.as_subclass(PlanTensor), log2phy.to(torch.bfloat16), logcnt.numpy()
