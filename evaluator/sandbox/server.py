"""The worker process's own side: it serves the evaluator's calls (`python -m evaluator.sandbox.server`).

It imports torch, initialises the device and reports ready; then it loads one candidate program
and answers batches of calls, one batch at a time, over the private channel. It never decides its own time limit:
the evaluator kills it.
"""

from __future__ import annotations

import argparse
import builtins
import dataclasses
import gc
import importlib.util
import math
import mmap
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from evaluator.sandbox import channel, exchange, proctree
from evaluator.sandbox.cards import cpu_model
from evaluator.sandbox.confinement import Confinement, confine
from evaluator.sandbox.torch_as_imported import TorchAsImported
from evaluator.status import Status

# this module's functions get builtins of their own: a program that patches `builtins` (its `len`, its `isinstance`)
# does not reach the worker's checks
__builtins__ = dict(vars(builtins))

MODULE_NAME = "candidate"
_MAX_MESSAGE_CHARS = 16_000
_PARENT_CHECK_S = 0.5
_OUT_OF_MEMORY_TEXT = ("can't allocate memory", "out of memory", "cannot allocate memory")


def _type_name(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE_CHARS else "[...]\n" + text[-_MAX_MESSAGE_CHARS:]


def _format_exception(error: BaseException) -> str:
    """The traceback from the candidate's first frame on (our own frames and importlib's dropped)."""
    tb = error.__traceback__
    while tb is not None and (tb.tb_frame.f_code.co_filename == __file__
                              or tb.tb_frame.f_code.co_filename.startswith("<frozen importlib")):
        tb = tb.tb_next
    try:
        return _clip("".join(traceback.format_exception(type(error), error, tb)))
    except BaseException:  # a candidate's exception may break even its own formatting
        return _type_name(error)


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    try:
        return isinstance(error, RuntimeError) and any(text in str(error) for text in _OUT_OF_MEMORY_TEXT)
    except BaseException:
        return False


def _interposed(what: str) -> str:
    return (f"the program left torch interposed: {what}. The evaluator checks every call with torch as it was "
            "before the import; a program may use modes and kernels of its own only within a call, and must leave "
            "torch's own operators as they were")


def _flush_standard_streams() -> None:
    for stream in (sys.__stdout__, sys.__stderr__, sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


class Region:
    """The worker's view of its exchange (exchange.py): the shared memory as a byte tensor. With CUDA, all of it is
    registered as pinned, so that copies between it and the device run at full speed and do not wait for the host
    (a copy to or from a range only partly registered is refused by CUDA)."""

    def __init__(self, runtime: Runtime, fd: int) -> None:
        torch = runtime.torch
        self._tensor = runtime.tensor
        self.size = os.fstat(fd).st_size
        self._memory = mmap.mmap(fd, self.size)
        self.bytes = torch.frombuffer(self._memory, dtype=torch.uint8)
        if runtime.device == "cuda":
            error = torch.cuda.cudart().cudaHostRegister(self.bytes.data_ptr(), self.size, 0)
            if int(error) != 0:
                raise RuntimeError(f"cudaHostRegister of the exchange failed with CUDA error {int(error)}")

    def view(self, offset: int, dtype: Any, shape: Sequence[int]) -> Any:
        """The region's bytes from `offset` as a tensor of `dtype` and `shape` (offset aligned, range checked)."""
        count = math.prod(shape) * dtype.itemsize
        tensor = self._tensor
        return tensor.view(tensor.view(tensor.slice(self.bytes, slice(offset, offset + count)), dtype), tuple(shape))


def _watch_parent(parent: int) -> None:
    """Leave, with the whole tree, if the evaluator dies: a worker must not outlive it."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_CHECK_S)
        for pid in reversed(proctree.descendants(os.getpid())):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        os._exit(channel.EXIT_ORPHANED)

    threading.Thread(target=watch, name="sandbox-parent-watch", daemon=True).start()


class Runtime:
    """torch on one device, with its clock, synchronisation, comparison and tensor methods captured before any
    candidate code runs, so that a candidate patching torch or time cannot reach them."""

    def __init__(self, requested_device: str, gpu_memory_mb: int) -> None:
        import torch

        self.torch = torch
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if requested_device == "auto" \
            else requested_device
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for, but torch.cuda.is_available() is False "
                               f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
        self.now = time.perf_counter_ns
        self.equal = torch.equal
        self.tensor = TorchAsImported(torch)
        self.tensor_type = torch.Tensor
        self.strided = torch.strided
        self.dtypes = {name: getattr(torch, name) for name in exchange.WIRE_DTYPES}
        torch.zeros(1, device=self.device).add_(1)  # create the CUDA context now, not in the first call
        if self.device == "cuda":
            synchronize = torch.cuda.synchronize
            devices = range(torch.cuda.device_count())

            def synchronize_every_device() -> None:
                for index in devices:
                    synchronize(index)

            self.card = torch.cuda.get_device_name()
            self.synchronize: Callable[[], None] = synchronize_every_device
            # torch's allocator refuses what would take the program past its limit, as an out-of-memory error in the
            # call that asked; the evaluator counts the rest (what a program allocates around torch) after each reply
            allowed = gpu_memory_mb * 2**20 + torch.cuda.memory_reserved()
            torch.cuda.set_per_process_memory_fraction(min(1.0, allowed / torch.cuda.mem_get_info()[1]))
        else:
            self.card = cpu_model()
            self.synchronize = lambda: None
        self.synchronize()

    def describe(self, pid: int) -> dict[str, Any]:
        return {"op": "ready", "pid": pid, "device": self.device, "card": self.card,
                "torch": self.torch.__version__, "cuda": self.torch.version.cuda}

    def timed_batch(self, function: Callable[..., Any], weights: Sequence[Any],
                    args: Sequence[int]) -> tuple[list[Any], int]:
        """Call `function(weight, *args)` on each of `weights`, back to back; return the values and the calls'
        perf-counter ns. The whole device is synchronised before the start stamp and before the end stamp (so work
        left running on any stream is counted), and nowhere between: the calls of a batch run as a program calls
        them in a row. A call that raises ends the batch: `BatchFailed` carries how many returned before it."""
        returned: list[Any] = []
        self.synchronize()
        gc_was_enabled = gc.isenabled()
        gc.disable()  # a collection triggered by earlier garbage must not land in the batch
        try:
            start = self.now()
            try:
                for weight in weights:
                    returned.append(function(weight, *args))
            except BaseException as error:
                raise BatchFailed(len(returned), error) from None
            finally:
                self.synchronize()
            end = self.now()
        finally:
            if gc_was_enabled:
                gc.enable()
        return returned, end - start


class BatchFailed(Exception):
    """A call of a batch raised `error`; `index` calls returned before it."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(index, error)
        self.index, self.error = index, error


class Server:
    """Answers the evaluator's messages: one `load`, then any number of `batch`es of calls."""

    def __init__(self, runtime: Runtime, region: Region) -> None:
        self.runtime = runtime
        self.region = region
        self.entry_point: Callable[..., Any] | None = None
        self.entry_point_name = ""

    def handle(self, header: dict[str, Any]) -> dict[str, Any]:
        op = header.get("op")
        if op == "load" and self.entry_point is None:
            return self.load(str(header["path"]), str(header["entry_point"]))
        if op == "prepare" and self.entry_point is None:
            try:
                return self.prepare(int(header["threads"]))
            except BaseException as error:  # only our own code has run: the evaluator's fault, not a candidate's
                return {"op": "fail", "kind": Status.INFRA_ERROR.value,
                        "message": f"preparing the worker failed: {_format_exception(error)}"}
        if op == "batch" and self.entry_point is not None:
            return self.batch([(str(item["dtype"]), [int(size) for size in item["shape"]], int(item["offset"]))
                               for item in header["inputs"]], [int(arg) for arg in header["args"]])
        raise channel.ProtocolError(f"unexpected message {op!r}")

    def _failure(self, error: BaseException, kind: str, what: str) -> dict[str, Any]:
        if _is_out_of_memory(error):
            return {"op": "fail", "kind": "memory_limit",
                    "message": f"{what} ran out of memory:\n{_format_exception(error)}"}
        return {"op": "fail", "kind": kind,
                "message": f"{what} raised {_type_name(error)}:\n{_format_exception(error)}"}

    def prepare(self, threads: int) -> dict[str, Any]:
        """Before the candidate is loaded: use `threads` threads for the CPU's work (the cores the evaluator put this
        process on)."""
        self.runtime.torch.set_num_threads(threads)
        return {"op": "prepared"}

    def load(self, path: str, entry_point: str) -> dict[str, Any]:
        try:
            spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
            if spec is None or spec.loader is None:
                return {"op": "fail", "kind": "import_error",
                        "message": f"{path} cannot be imported as a Python module"}
            module = importlib.util.module_from_spec(spec)
            sys.modules[MODULE_NAME] = module
            sys.argv = [path]
            spec.loader.exec_module(module)
        except SystemExit as error:
            return {"op": "fail", "kind": "import_error",
                    "message": f"the program called sys.exit({error.code!r}) while being imported; at import a "
                               "program must only define functions, classes and constants"}
        except BaseException as error:
            return self._failure(error, "import_error", "importing the program")
        finally:
            _flush_standard_streams()
        interposed = self.runtime.tensor.interposed()
        if interposed is not None:
            return {"op": "fail", "kind": "import_error", "message": _interposed(interposed)}
        try:
            function = getattr(module, entry_point, None)
            defined = sorted(name for name, value in vars(module).items()
                             if callable(value) and not name.startswith("_"))
        except BaseException as error:  # a module-level __getattr__ is candidate code too
            return self._failure(error, "import_error", f"looking up `{entry_point}`")
        if function is None:
            return {"op": "fail", "kind": "missing_function",
                    "message": f"the program defines no `{entry_point}`; its public callables are: "
                               f"{', '.join(defined) or 'none'}"}
        if not callable(function):
            return {"op": "fail", "kind": "missing_function",
                    "message": f"`{entry_point}` is a {_type_name(function)}, not a function"}
        self.entry_point, self.entry_point_name = function, entry_point
        return {"op": "loaded"}

    def batch(self, inputs: Sequence[tuple[str, list[int], int]], args: list[int]) -> dict[str, Any]:
        """Call the entry point on each input (dtype, shape, offset in the exchange), back to back; the reply, the
        outputs of every call copied in after the inputs."""
        runtime, tensor = self.runtime, self.runtime.tensor
        staged = [self.region.view(offset, runtime.dtypes[dtype], shape) for dtype, shape, offset in inputs]
        # each call gets a tensor of its own: what its process does to the exchange after this is not its input
        weights = [tensor.to(item, runtime.device, non_blocking=True) if runtime.device == "cuda" else tensor.clone(item)
                   for item in staged]
        try:
            returned, claim_ns = runtime.timed_batch(self.entry_point, weights, args)
        except BatchFailed as failed:
            return self._call_failure(failed.error, failed.index)
        finally:
            _flush_standard_streams()
        interposed = tensor.interposed()
        if interposed is not None:
            return {"op": "fail", "kind": "exception", "call": len(weights) - 1, "message": _interposed(interposed)}
        start = exchange.aligned(max(offset + tensor.numel(item) * tensor.element_size(item)
                                     for item, (_, _, offset) in zip(staged, inputs)))
        calls, inputs_left = [], []
        for weight, item, value in zip(weights, staged, returned):
            try:
                entries, length, start = self._outputs(value, start)
            except BaseException as error:
                return self._failure(error, "exception", "reading the returned values")
            left, start = self._input_as_left(weight, item, start)
            inputs_left.append(left)
            calls.append({"returned_type": _type_name(value), "returned_length": length, "outputs": entries})
        self.runtime.synchronize()  # one wait for every copy
        for call, item, left in zip(calls, staged, inputs_left):
            call["input_mutated"] = left is None or not runtime.equal(left, item)
        for call, reused in zip(calls, _sharing_earlier_outputs(returned, runtime.tensor_type, tensor)):
            call["shares_memory_with"] = reused
        return {"op": "batch_result", "claim_ns": claim_ns, "calls": calls}

    def _input_as_left(self, weight: Any, staged: Any, start: int) -> tuple[Any | None, int]:
        """A call's input as the call left it, on the host, to compare with the exchange's copy (`staged`) once the
        device is synchronised: copied into the exchange from `start` (without waiting) where it is on the device, so
        that no call's check waits for the device on its own. None where its dtype, shape or layout changed, or it
        cannot be read. Also where the next outputs may start."""
        methods = self.runtime.tensor
        try:
            dtype, shape = methods.dtype(weight), methods.shape(weight)
            if (dtype != methods.dtype(staged) or shape != methods.shape(staged)
                    or methods.layout(weight) != self.runtime.strided):
                return None, start
            if methods.device(weight).type == "cpu":
                return weight, start
            end = exchange.aligned(start + methods.numel(weight) * methods.element_size(weight))
            if end > self.region.size:  # only outputs wider than any valid plan's leave no room
                return methods.to(weight, "cpu"), start
            left = self.region.view(start, dtype, shape)
            methods.copy_(left, weight, non_blocking=True)
            return left, end
        except BaseException:  # the candidate changed the input in a way no copy survives
            return None, start

    def _call_failure(self, error: BaseException, index: int) -> dict[str, Any]:
        if isinstance(error, SystemExit):
            return {"op": "fail", "kind": "exception", "call": index,
                    "message": f"{self.entry_point_name} called sys.exit({error.code!r}) instead of returning\n"
                               f"{_format_exception(error)}"}
        return {**self._failure(error, "exception", self.entry_point_name), "call": index}

    def _outputs(self, returned: Any, start: int) -> tuple[list[dict[str, Any]], int | None, int]:
        """How each returned value crosses, the tensors copied (without waiting for the device) into the exchange from
        `start`, in order and aligned; the number of values if a tuple or list was returned; where the next call's
        outputs may start."""
        is_sequence = type(returned) in (tuple, list)
        length = len(returned) if is_sequence else None
        items = list(returned) if is_sequence else [returned]
        if len(items) > channel.MAX_OUTPUTS:
            return [], length, start
        entries = [self._entry(item) for item in items]
        methods = self.runtime.tensor
        offset = start
        for entry, tensor in zip(entries, items):
            if "device" in entry:
                shape = methods.shape(tensor)
                entry.update(dtype=str(methods.dtype(tensor)).removeprefix("torch."), shape=list(shape), offset=offset)
                offset = exchange.aligned(offset + exchange.counted_bytes(shape, methods.element_size(tensor)))
        if offset > self.region.size:
            too_large = {"unsupported": {"type": "torch.Tensor", "detail": f"outputs of {offset - start} bytes "
                                         f"together are too large to return (the limit is {self.region.size - start})"}}
            return [too_large if "offset" in entry else entry for entry in entries], length, start
        for entry, tensor in zip(entries, items):
            if "offset" in entry:
                dtype, shape = methods.dtype(tensor), methods.shape(tensor)
                try:
                    methods.copy_(self.region.view(entry["offset"], dtype, shape), methods.detach(tensor),
                                  non_blocking=True)
                except (RuntimeError, NotImplementedError, TypeError) as error:
                    detail = f"dtype {dtype}, shape {tuple(shape)}, unreadable: {error}"
                    entry.clear()
                    entry["unsupported"] = {"type": "torch.Tensor", "detail": detail}
        return entries, length, offset

    def _entry(self, value: Any) -> dict[str, Any]:
        """How an output crosses: `device` for a tensor that can (later its place in the exchange), else
        `unsupported` with what it is."""
        runtime, tensor = self.runtime, self.runtime.tensor
        if type(value) is not runtime.tensor_type:
            return {"unsupported": {"type": _type_name(value), "detail": self._detail(value)}}
        dtype, layout = tensor.dtype(value), tensor.layout(value)
        if layout != runtime.strided or str(dtype).removeprefix("torch.") not in exchange.WIRE_DTYPES:
            detail = f"dtype {dtype}, layout {layout}, shape {tuple(tensor.shape(value))}"
            return {"unsupported": {"type": "torch.Tensor", "detail": detail}}
        return {"device": str(tensor.device(value))}

    def _detail(self, value: Any) -> str:
        if type(value) in (list, tuple, dict, set, str, bytes):
            return f"{len(value)} items"
        if isinstance(value, np.ndarray):
            return f"dtype {value.dtype}, shape {value.shape}"
        if isinstance(value, self.runtime.tensor_type):
            try:  # a subclass's attributes may run its own code
                return f"a subclass of torch.Tensor, dtype {value.dtype}, shape {tuple(value.shape)}"
            except BaseException:
                return "a subclass of torch.Tensor"
        return ""


def _sharing_earlier_outputs(returned: Sequence[Any], tensor_type: type, tensor: TorchAsImported) -> list[int | None]:
    """Per call, the index of an earlier call of the batch one of whose returned tensors shares memory with one of
    its own, else None: a program that fills the same tensors on every call changes the plans it returned before,
    and each plan must stay as it was returned."""
    spans: list[tuple[int, int, int]] = []  # (first byte, end, call)
    found: list[int | None] = []
    for index, value in enumerate(returned):
        items = list(value) if type(value) in (tuple, list) else [value]
        own = []
        for item in items[:channel.MAX_OUTPUTS]:
            if type(item) is tensor_type:
                try:
                    storage = tensor.untyped_storage(item)
                    first, size = tensor.storage_pointer(storage), tensor.storage_bytes(storage)
                except BaseException:  # a tensor without a storage of its own shares nothing
                    continue
                if size:
                    own.append((first, first + size))
        found.append(next((call for first, end, call in spans for start, stop in own if start < end and first < stop),
                          None))
        spans.extend((start, stop, index) for start, stop in own)
    return found


def _warm_up(server: Server, options: argparse.Namespace) -> None:
    """Serve batches of one call of a trusted program on random loads, whole (input from the exchange to the device,
    the timed call, the input check, the outputs into the exchange, the reply encoded), then forget it: every kernel and code
    path a call uses is loaded before the first candidate call, which would otherwise pay for them outside its
    timed span."""
    spec = importlib.util.spec_from_file_location("eplb_warm_up", options.warm_up_program)
    if spec is None or spec.loader is None:
        raise ImportError(f"{options.warm_up_program} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server.entry_point, server.entry_point_name = module.rebalance_experts, "the warm-up program"
    torch = server.runtime.torch
    dtype = getattr(torch, options.warm_up_dtype)
    generator = torch.Generator().manual_seed(0)
    for _ in range(options.warm_up_calls):
        weight = (torch.rand(options.warm_up_shape, generator=generator) * 1000).to(dtype)
        server.region.view(0, dtype, weight.shape).copy_(weight)
        header = server.batch([(options.warm_up_dtype, options.warm_up_shape, 0)], options.warm_up_args)
        if header["op"] != "batch_result":
            raise RuntimeError(header["message"])
        channel.encode(header)
    server.entry_point = None
    del module, spec
    gc.collect()


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def _send(fd: int, header: dict[str, Any]) -> None:
    channel.write_blocking(fd, channel.encode(header))


def main(argv: Sequence[str] | None = None, confined: Confinement | None = None) -> int:
    """Serve the evaluator over the descriptors `argv` names. `confined` is the confinement already applied (by
    `spawned_worker`, before any import); without it the worker applies it here, first."""
    parser = argparse.ArgumentParser(prog="python -m evaluator.sandbox.server")
    parser.add_argument("--commands", type=int, required=True, help="descriptor to read commands from")
    parser.add_argument("--results", type=int, required=True, help="descriptor to write results to")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--gpu-memory-mb", type=int, required=True, help="what torch's allocator may take on the GPU")
    parser.add_argument("--exchange", type=int, required=True, help="descriptor of the shared memory calls cross in")
    parser.add_argument("--warm-up-program", help="a trusted program to run before reporting ready")
    parser.add_argument("--warm-up-shape", type=_ints, help="layers,experts of its random loads")
    parser.add_argument("--warm-up-args", type=_ints, help="its arguments after the loads")
    parser.add_argument("--warm-up-dtype", default="int64", help="the dtype of its loads")
    parser.add_argument("--warm-up-calls", type=int, default=0)
    parser.add_argument("--unconfined", action="store_true", help="skip the confinement (to test what holds without)")
    options = parser.parse_args(argv)

    # first: every thread and process started from here on is confined too
    confinement = confined or (Confinement.none() if options.unconfined else confine(os.getcwd()))
    proctree.become_subreaper()
    _watch_parent(os.getppid())
    try:
        runtime = Runtime(options.device, options.gpu_memory_mb)
        server = Server(runtime, Region(runtime, options.exchange))
    except BaseException as error:
        _send(options.results, {"op": "fail", "kind": Status.INFRA_ERROR.value,
                                "message": f"the worker could not initialise torch on '{options.device}' or map its "
                                           f"exchange: {_format_exception(error)}"})
        return 1
    if options.warm_up_program:
        try:
            _warm_up(server, options)
        except BaseException as error:
            _send(options.results, {"op": "fail", "kind": Status.INFRA_ERROR.value,
                                    "message": f"the worker's warm-up failed: {_format_exception(error)}"})
            return 1
    try:
        _send(options.results, {**runtime.describe(os.getpid()), "confinement": dataclasses.asdict(confinement)})
        while True:
            try:
                header = channel.read_blocking(options.commands)
            except channel.ChannelClosed:
                return 0  # the evaluator is done with us
            _send(options.results, server.handle(header))
    except (channel.ChannelError, OSError, KeyError, ValueError, TypeError, IndexError):
        return channel.EXIT_CHANNEL_LOST


if __name__ == "__main__":
    sys.exit(main())
