"""The ray backend on a Ray cluster of this machine: a head node (the driver's, without lanes) and two worker nodes,
each declaring a CPU lane. Results match the local backend's, name their node, survive a node's death, and an
unreachable cluster is an error within seconds.

The cluster and one `RayEvaluator` on it are shared by the module; the tests that remove and add nodes run last.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from failing_programs import DROPS_AN_EXPERT, RAISES
from small_problem import SMALL_OPTIONS, SMALL_SETTINGS, SMALL_TRACE

from evaluator import api
from evaluator.cli import main
from evaluator.cluster.address import parse_address
from evaluator.cluster.nodes import CPU_LANE_RESOURCE, LaneNode, lane_nodes
from evaluator.exitcodes import ExitCode
from evaluator.paths import PROJECT_ROOT, SEED_PROGRAM

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="ray is not installed (the test extra installs it: pip install -e '.[test]')")
FAST_PROGRAM = PROJECT_ROOT / "evaluator" / "bench" / "programs" / "topk_snake.py"
LANE = {CPU_LANE_RESOURCE: 1}


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        cluster.add_node(num_cpus=1, resources=LANE)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="module")
def remote(cluster):
    """A RayEvaluator of the small problem on the cluster's two CPU lanes."""
    from evaluator.cluster import RayEvaluator

    with RayEvaluator(SMALL_TRACE, SMALL_SETTINGS, address=cluster.address, device="cpu") as evaluator:
        assert evaluator.wait_for_nodes(), evaluator.nodes()
        yield evaluator


def lane_node_ids(cluster) -> set[str]:
    return {node.node_id for node in cluster.worker_nodes}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_cli(*argv: str, cwd, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evaluator", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("text", ["auto", "10.0.0.7:6379", "head-node.example:6379", "[fe80::1]:6379"])
def test_an_address_is_the_head_nodes_host_and_port_or_auto(text):
    assert parse_address(text) == text


@pytest.mark.parametrize("text", ["", "x", "10.0.0.7", "10.0.0.7:0", "10.0.0.7:99999", "host:port", ":6379",
                                  "ray://10.0.0.7:10001", "10.0.0.7:6379 --x"])
def test_anything_else_is_refused_as_an_address(text):
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_address(text)


def test_every_gpu_of_a_node_is_a_lane_and_a_node_without_gpus_needs_a_declared_cpu_lane():
    nodes = [{"NodeID": "gpus", "NodeManagerAddress": "10.0.0.1", "Alive": True, "Resources": {"CPU": 64, "GPU": 8}},
             {"NodeID": "cpu", "NodeManagerAddress": "10.0.0.2", "Alive": True, "Resources": {"CPU": 8, **LANE}},
             {"NodeID": "bare", "NodeManagerAddress": "10.0.0.3", "Alive": True, "Resources": {"CPU": 8}},
             {"NodeID": "dead", "NodeManagerAddress": "10.0.0.4", "Alive": False, "Resources": {"GPU": 8}}]
    gpus, cpu = LaneNode("gpus", "10.0.0.1", "cuda", 8), LaneNode("cpu", "10.0.0.2", "cpu", 1)
    assert lane_nodes(nodes, "auto") == [gpus, cpu]
    assert lane_nodes(nodes, "cuda") == [gpus] and lane_nodes(nodes, "cpu") == [cpu]
    # an actor of every evaluator on a node: none reserves a lane in Ray's accounting, the node's lock decides
    assert gpus.actor_options()["num_gpus"] == 0 and cpu.actor_options()["resources"][CPU_LANE_RESOURCE] < 0.01


@pytest.mark.parametrize("argv, said", [
    (["--address", "127.0.0.1:6379"], "--address names a Ray cluster: give it with --backend ray"),
    (["--backend", "ray", "--gpu-ids", "0"], "--gpu-ids names GPUs of this machine"),
])
def test_cluster_options_that_do_not_go_together_are_refused_before_anything_connects(capsys, argv, said):
    assert main(["evaluate", str(SEED_PROGRAM), *argv]) == ExitCode.BAD_INPUT
    assert said in capsys.readouterr().err


@needs_ray
def test_an_unreachable_cluster_is_a_clear_error_within_seconds(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    run = run_cli("evaluate", str(SEED_PROGRAM), "--backend", "ray", "--address", address, cwd=tmp_path, timeout=60)
    assert run.returncode == ExitCode.INFRA_ERROR, run.stderr
    assert f"error: no Ray cluster answers at {address}: Connection refused" in run.stderr
    assert "Traceback" not in run.stderr and time.monotonic() - started < 20


@needs_ray
def test_the_command_line_evaluates_on_the_cluster_beside_another_evaluator(remote, cluster, tmp_path):
    """Another process's evaluator, as a loop's process pool runs several: its actors share the nodes' lanes."""
    run = run_cli("evaluate", str(SEED_PROGRAM), "--backend", "ray", "--address", cluster.address, "--device", "cpu",
                  "--json", *SMALL_OPTIONS, cwd=tmp_path)
    assert run.returncode == ExitCode.OK, run.stderr
    result = json.loads(run.stdout)
    assert result["status"] == "ok" and result["balancedness_score"] > 0 and result["device"] == "cpu"
    assert result["node"]["id"] in lane_node_ids(cluster) and result["attempts"] == []


@needs_ray
def test_the_api_evaluates_on_the_cluster_on_a_held_out_trace_made_here(remote, cluster):
    api.configure(settings=SMALL_SETTINGS, device="cpu", backend="ray", address=cluster.address)
    try:
        result = api.evaluate_program(SEED_PROGRAM.read_text())
        first_stage = api.check_program(DROPS_AN_EXPERT)
    finally:
        api.configure()  # back to the local backend; the cluster's lanes are let go
    assert result.ok, result.error
    assert result.workload["source"] == "holdout" and result.node["id"] in lane_node_ids(cluster)
    assert first_stage.status == "invalid_output" and first_stage.node is not None


@needs_ray
def test_results_match_the_local_backends_and_name_their_node(remote, small, cluster, tmp_path):
    programs = {"seed": SEED_PROGRAM, "fast": FAST_PROGRAM}
    for name, source in {"raises": RAISES, "drops": DROPS_AN_EXPERT}.items():
        programs[name] = tmp_path / f"{name}.py"
        programs[name].write_text(source)
    with ThreadPoolExecutor(remote.lane_count) as threads:
        on_cluster = dict(zip(programs, threads.map(remote.evaluate, programs.values())))
    expected = {"seed": "ok", "fast": "ok", "raises": "exception", "drops": "invalid_output"}
    for name, program in programs.items():
        local, there = small.evaluate(program), on_cluster[name]
        assert there.status == local.status == expected[name], (name, there.error, local.error)
        assert there.balancedness_score == local.balancedness_score, name
        assert there.slot_balancedness == local.slot_balancedness, name
        assert there.seed_balancedness == local.seed_balancedness, name
        assert [v["invariant"] for v in there.violations] == [v["invariant"] for v in local.violations], name
        assert there.node["id"] in lane_node_ids(cluster) and there.node["host"] == socket.gethostname()
        assert there.attempts == [] and local.node is None and there.device == local.device == "cpu"
    assert on_cluster["seed"].speedup > 0 and on_cluster["fast"].timing["lane"] == "cpu"
    assert len({result.node["id"] for result in on_cluster.values()}) == 2  # both nodes took candidates


@needs_ray
def test_the_first_stage_check_runs_on_a_node(remote, cluster):
    result = remote.check(SEED_PROGRAM)
    assert result.ok and result.combined_score == 0 and result.node["id"] in lane_node_ids(cluster)


@needs_ray
def test_the_benchmark_counts_candidates_per_minute_for_each_number_of_busy_lanes(remote):
    from evaluator.bench import cluster as cluster_bench

    measured = cluster_bench.measure(remote, candidates=2)
    assert measured.lanes == 2 and [row.lanes for row in measured.throughput] == [1, 2]
    assert all(row.candidates == 2 and row.candidates_per_minute > 0 for row in measured.throughput)
    assert [node["state"] for node in measured.nodes] == ["ready", "ready"]
    assert cluster_bench.lane_steps(1) == [1] and cluster_bench.lane_steps(8) == [1, 2, 4, 8]
    assert cluster_bench.lane_steps(6) == [1, 2, 4, 6]


@needs_ray
def test_a_node_that_dies_mid_evaluation_costs_an_attempt_and_the_candidate_is_scored_once_on_another(
        remote, cluster, tmp_path):
    """The cluster keeps one lane after it."""
    slow = tmp_path / "slow.py"
    slow.write_text("import time\nprint('imported', flush=True)\ntime.sleep(2)\n" + SEED_PROGRAM.read_text())
    results = []
    evaluating = threading.Thread(target=lambda: results.append(remote.evaluate(slow)))
    evaluating.start()
    deadline = time.monotonic() + 60
    while not (busy := [node for node in remote.nodes() if node["busy"]]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert busy, remote.nodes()
    time.sleep(1.0)  # its worker is importing the program by now
    victim = next(node for node in cluster.worker_nodes if node.node_id == busy[0]["id"])
    cluster.remove_node(victim, allow_graceful=False)
    evaluating.join(timeout=120)
    assert len(results) == 1, "one result, however many attempts"
    result = results[0]
    assert result.ok, result.error
    assert result.node["id"] != victim.node_id and result.node["id"] in lane_node_ids(cluster)
    assert [(attempt["status"], attempt["node"]["id"]) for attempt in result.attempts] == [
        ("infra_error", victim.node_id)]
    assert "the attempt was lost" in result.attempts[0]["error"]
    assert result.stdout == "imported\n"  # what the run that was scored printed, nothing of the lost one
    states = {node["id"]: node["state"] for node in remote.nodes()}
    assert states[victim.node_id] == "lost" and remote.lane_count == 1
    again = remote.evaluate(SEED_PROGRAM)  # the surviving node takes the next candidate
    assert again.ok and again.node["id"] == result.node["id"] and again.attempts == []


@needs_ray
def test_the_cluster_is_asked_for_its_nodes_without_the_drivers_lock(remote, monkeypatch):
    from evaluator.cluster import driver

    monkeypatch.setattr(driver, "DISCOVER_EVERY_S", 0.0)  # look at the cluster on every candidate
    listed, locked = driver.ray.nodes, []

    def try_the_lock(free: list[bool]) -> None:
        free.append(remote._condition.acquire(timeout=2))
        if free[-1]:
            remote._condition.release()

    def nodes():
        free: list[bool] = []  # whether another thread, releasing a lane, could take the lock meanwhile
        probe = threading.Thread(target=try_the_lock, args=(free,))
        probe.start()
        probe.join()
        locked.append(not free[0])
        return listed()

    monkeypatch.setattr(driver.ray, "nodes", nodes)
    assert remote.evaluate(SEED_PROGRAM).ok
    assert locked and not any(locked)


@needs_ray
def test_a_node_that_joins_the_cluster_later_gets_lanes(remote, cluster, monkeypatch):
    from evaluator.cluster import driver

    monkeypatch.setattr(driver, "DISCOVER_EVERY_S", 0.0)  # look at the cluster on every candidate
    lanes = remote.lane_count  # as the tests before left the cluster
    joined = cluster.add_node(num_cpus=1, resources=LANE)
    cluster.wait_for_nodes()
    assert remote.evaluate(SEED_PROGRAM).ok  # the nodes it had take it, while the new one starts
    assert remote.wait_for_nodes() and remote.lane_count == lanes + 1
    with ThreadPoolExecutor(lanes + 1) as threads:  # one candidate for each lane, at once
        results = list(threads.map(remote.evaluate, [SEED_PROGRAM] * (lanes + 1)))
    assert all(result.ok for result in results)
    assert joined.node_id in {result.node["id"] for result in results}
