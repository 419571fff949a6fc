"""A small problem and trace, so that end-to-end evaluations take seconds on a CPU."""

from evaluator.eplb.problem import Problem
from evaluator.eplb.synthetic import SyntheticConfig, generate_trace
from evaluator.evaluation import Settings
from evaluator.sandbox import Limits

SMALL = Problem(num_layers=6, num_experts=32, num_replicas=48, num_groups=4, num_nodes=2, num_gpus=8)
SMALL_TRACE = generate_trace(SyntheticConfig.for_problem(SMALL, num_windows=6), seed=11)
SMALL_SETTINGS = Settings(problem=SMALL, timeout_s=30, limits=Limits(memory_mb=1536))
# The same shape as command-line options.
SMALL_OPTIONS = ["--layers", str(SMALL.num_layers), "--experts", str(SMALL.num_experts), "--replicas",
                 str(SMALL.num_replicas), "--groups", str(SMALL.num_groups), "--nodes", str(SMALL.num_nodes),
                 "--gpus", str(SMALL.num_gpus)]
