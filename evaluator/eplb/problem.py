"""The shape of one rebalancing problem: how many layers, experts, slots, groups, nodes and GPUs."""

from __future__ import annotations

from dataclasses import dataclass

MAX_PROBLEM_SIZE = 2**16  # of any one parameter
MAX_SLOTS = 2**22  # layers times physical slots: a plan of 4M slots (the default has 16,704)


@dataclass(frozen=True)
class Problem:
    """Parameters of `rebalance_experts`; the defaults are DeepSeek-V3 prefill.

    `num_replicas` physical slots are spread evenly over `num_gpus` GPUs, slot
    p living on GPU p // slots_per_gpu.
    """

    num_layers: int = 58
    num_experts: int = 256
    num_replicas: int = 288
    num_groups: int = 8
    num_nodes: int = 4
    num_gpus: int = 32

    def __post_init__(self) -> None:
        problems = []
        for name in ("num_layers", "num_experts", "num_replicas", "num_groups", "num_nodes", "num_gpus"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if not problems:
            if self.num_replicas < self.num_experts:
                problems.append(
                    f"num_replicas ({self.num_replicas}) must be at least num_experts ({self.num_experts})"
                )
            if self.num_replicas % self.num_gpus:
                problems.append(
                    f"num_replicas ({self.num_replicas}) must be a multiple of num_gpus ({self.num_gpus})"
                )
            if self.num_gpus % self.num_nodes:
                problems.append(f"num_gpus ({self.num_gpus}) must be a multiple of num_nodes ({self.num_nodes})")
            if self.num_layers * self.num_replicas > MAX_SLOTS:
                problems.append(f"num_layers x num_replicas ({self.num_layers} x {self.num_replicas}) must be at "
                                f"most {MAX_SLOTS}")
            if self.num_experts % self.num_groups:
                problems.append(
                    f"num_experts ({self.num_experts}) must be a multiple of num_groups ({self.num_groups})"
                )
        if problems:
            raise ValueError("invalid problem: " + "; ".join(problems))

    @property
    def slots_per_gpu(self) -> int:
        return self.num_replicas // self.num_gpus

    @property
    def max_replicas_per_expert(self) -> int:
        """Width of `log2phy`: an expert holds at most every redundant slot plus its own."""
        return self.num_replicas - self.num_experts + 1

    @property
    def hierarchical(self) -> bool:
        """Whether the seed uses its hierarchical policy (groups divide evenly over nodes)."""
        return self.num_groups % self.num_nodes == 0

    def rebalance_args(self) -> tuple[int, int, int, int]:
        """The integer arguments of `rebalance_experts`, after `weight`."""
        return (self.num_replicas, self.num_groups, self.num_nodes, self.num_gpus)
