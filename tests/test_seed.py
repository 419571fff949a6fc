"""The seed program: its layout, the text the seed patch is written against, and what the patch preserves."""

from __future__ import annotations

import ast
import re
import types
import zlib

import pytest
import torch

from evaluator import apply_patch
from evaluator.paths import PROJECT_ROOT, SEED_PROGRAM

SEED_PATCH = PROJECT_ROOT / "patches" / "vectorized_packing_and_replication.diff"
SEED_SOURCE = SEED_PROGRAM.read_text(encoding="utf-8")
SEED_PATCH_TEXT = SEED_PATCH.read_text(encoding="utf-8")

# (weight shape, (num_replicas, num_groups, num_nodes, num_gpus)): DeepSeek-V3 prefill, a small hierarchical
# case, and a decode-like case whose groups do not divide over the nodes (the global policy).
SHAPES = [
    ((58, 256), (288, 8, 4, 32)),
    ((4, 16), (24, 4, 2, 4)),
    ((6, 64), (144 * 2 // 4, 8, 3, 36)),
]


def load(source: str, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(source, name, "exec"), module.__dict__)
    return module


def test_seed_layout():
    lines = SEED_SOURCE.splitlines()
    assert lines[0] == "# EVOLVE-BLOCK-START"
    end = lines.index("# EVOLVE-BLOCK-END")
    block = ast.parse("\n".join(lines[1:end]))
    assert ast.get_docstring(block)
    assert isinstance(block.body[1], ast.Import) and block.body[1].names[0].name == "torch"
    functions = [node.name for node in block.body if isinstance(node, ast.FunctionDef)]
    assert functions == [
        "balanced_packing",
        "replicate_experts",
        "rebalance_experts_hierarchical",
        "rebalance_experts",
    ]
    outside = ast.parse("\n".join(lines[end + 1 :]))
    assert [n.name for n in outside.body if isinstance(n, ast.FunctionDef)] == ["run_eplb"]
    exported = [n for n in outside.body if isinstance(n, ast.Assign) and n.targets[0].id == "__all__"]
    assert ast.literal_eval(exported[0].value) == ["rebalance_experts", "run_eplb"]


def test_every_search_block_of_the_seed_patch_matches_the_seed_exactly_once():
    searches = re.findall(r"^<<<<<<< SEARCH\n(.*?)^=======\n", SEED_PATCH_TEXT, re.DOTALL | re.MULTILINE)
    assert len(searches) == 3
    for search in searches:
        assert SEED_SOURCE.count(search) == 1


def test_seed_patch_file_is_the_whole_answer():
    assert SEED_PATCH_TEXT.startswith("<NAME>\nvectorized_packing_and_replication\n</NAME>")
    assert "<DESCRIPTION>" in SEED_PATCH_TEXT and SEED_PATCH_TEXT.rstrip().endswith("</DIFF>")


def random_weight(shape: tuple[int, int], kind: str, generator: torch.Generator) -> torch.Tensor:
    if kind == "counts":
        return torch.randint(0, 5000, shape, generator=generator)
    if kind == "ties":  # few distinct values: many equal loads, so tie-breaking must agree too
        return torch.randint(0, 4, shape, generator=generator)
    return torch.rand(shape, generator=generator, dtype=torch.float32) * 100


@pytest.mark.parametrize("shape, args", SHAPES)
@pytest.mark.parametrize("kind", ["counts", "ties", "float"])
def test_seed_patch_gives_the_seed_outputs(shape, args, kind):
    seed = load(SEED_SOURCE, "seed")
    patched = load(apply_patch(SEED_SOURCE, SEED_PATCH_TEXT), "patched")
    generator = torch.Generator().manual_seed(zlib.crc32(f"{shape}{kind}".encode()))
    for _ in range(3):
        weight = random_weight(shape, kind, generator)
        expected = seed.run_eplb(weight.clone(), *args)
        actual = patched.run_eplb(weight.clone(), *args)
        for name, want, got in zip(("phy2log", "log2phy", "logcnt"), expected, actual):
            assert torch.equal(want, got), name


@pytest.mark.parametrize("shape, args", SHAPES)
def test_seed_outputs_have_the_contract_shapes(shape, args):
    seed = load(SEED_SOURCE, "seed")
    num_layers, num_experts = shape
    num_replicas = args[0]
    phy2log, log2phy, logcnt = seed.run_eplb(torch.randint(1, 100, shape), *args)
    assert phy2log.shape == (num_layers, num_replicas) and phy2log.dtype == torch.int64
    assert log2phy.shape == (num_layers, num_experts, num_replicas - num_experts + 1)
    assert torch.equal(logcnt.sum(-1), torch.full((num_layers,), num_replicas))
    for layer in range(num_layers):
        assert torch.equal(torch.bincount(phy2log[layer], minlength=num_experts), logcnt[layer])
