"""Sources of small candidate programs that fail in one known way each, for the loops' and the API's tests."""

from evaluator.paths import SEED_PROGRAM

RAISES = "def rebalance_experts(*args):\n    raise ValueError('the packing ran out of slots')\n"
DROPS_AN_EXPERT = f"""
import importlib.util
_spec = importlib.util.spec_from_file_location("seed_eplb", {str(SEED_PROGRAM)!r})
seed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seed)

def rebalance_experts(weight, *args):
    phy2log, log2phy, logcnt = seed.rebalance_experts(weight, *args)
    phy2log = phy2log.clone()
    phy2log[0][phy2log[0] == 0] = 1  # expert 0 loses every slot to expert 1
    return phy2log, log2phy, logcnt
"""
