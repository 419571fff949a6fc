"""What a worker's replies say, read as untrusted: each field of the type it must have, a batch's outputs copied out of
the exchange within its bounds, and how a worker's exit reads."""

from __future__ import annotations

import signal
from dataclasses import fields
from typing import Any

from evaluator.sandbox import channel, exchange
from evaluator.sandbox.results import BatchResult, CallResult, Confinement, Output, Unsupported


def describe_exit(returncode: int) -> tuple[str, int | None, str | None]:
    """(phrase, exit code, signal name) for a Popen return code."""
    if returncode < 0:
        try:
            number = signal.Signals(-returncode)
            name = number.name
            meaning = signal.strsignal(number) or name
        except ValueError:
            name = meaning = f"signal {-returncode}"
        hint = " (which the system's out-of-memory killer also sends)" if name == "SIGKILL" else ""
        return f"was killed by {name} ({meaning}){hint}", None, name
    if returncode == channel.EXIT_CHANNEL_LOST:
        return ("lost its private channel to the evaluator (exit code 3): the program must not close, read or "
                "write file descriptors it did not open"), returncode, None
    return f"exited with code {returncode}", returncode, None


def text(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def field(header: dict[str, Any], name: str, kinds: type | tuple[type, ...]) -> Any:
    """`header[name]`, which must be of one of `kinds` (a bool is not taken for an int)."""
    allowed = kinds if isinstance(kinds, tuple) else (kinds,)
    value = header.get(name)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise channel.ProtocolError(f"field {name!r} is {value!r:.200}")
    return value


def confinement(header: dict[str, Any]) -> Confinement:
    reported = field(header, "confinement", dict)
    kinds = {"bool": bool, "int": int}  # the fields' annotations, as strings
    return Confinement(**{item.name: field(reported, item.name, kinds[item.type]) for item in fields(Confinement)})


def batch_result(header: dict[str, Any], shared: exchange.Exchange, start: int, count: int, first_call: int,
                  round_trip_ns: int) -> BatchResult:
    """A batch's result from the worker's reply, every output that crossed copied out of the exchange at once."""
    claim_ns = field(header, "claim_ns", int)
    # The worker's stamps fall inside the evaluator's, on the same clock: anything else is a tampered clock.
    if claim_ns <= 0:
        raise channel.ProtocolError(f"it timed the calls at {claim_ns} ns, no time at all: its clock was tampered with")
    if claim_ns > round_trip_ns:
        raise channel.ProtocolError(f"it timed the calls at {claim_ns} ns, more than their round trip of "
                                    f"{round_trip_ns} ns: its clock was tampered with")
    calls = field(header, "calls", list)
    if len(calls) != count or not all(isinstance(call, dict) for call in calls):
        raise channel.ProtocolError(f"{len(calls)} results for {count} calls")
    entries = []
    for call in calls:
        described = field(call, "outputs", list)
        if len(described) > channel.MAX_OUTPUTS:
            raise channel.ProtocolError(f"{len(described)} outputs, over the limit of {channel.MAX_OUTPUTS}")
        if not all(isinstance(entry, dict) for entry in described):
            raise channel.ProtocolError(f"outputs are {described!r:.200}")
        entries.append(described)
    try:
        arrays = iter(shared.read_outputs([entry for described in entries for entry in described if "offset" in entry],
                                          start))
    except exchange.ExchangeError as error:
        raise channel.ProtocolError(str(error)) from None
    results = []
    for index, (call, described) in enumerate(zip(calls, entries)):
        outputs: list[Output] = []
        devices: list[str | None] = []
        for entry in described:
            if "offset" in entry:
                outputs.append(next(arrays))
                devices.append(field(entry, "device", str))
            else:
                unsupported = field(entry, "unsupported", dict)
                outputs.append(Unsupported(field(unsupported, "type", str), field(unsupported, "detail", str)))
                devices.append(None)
        reused = field(call, "shares_memory_with", (int, type(None)))
        if reused is not None and not 0 <= reused < index:
            raise channel.ProtocolError(f"call {index} shares memory with call {reused}, not one before it")
        results.append(CallResult(
            call_index=first_call + index,
            returned_type=field(call, "returned_type", str),
            returned_length=field(call, "returned_length", (int, type(None))),
            outputs=tuple(outputs),
            output_devices=tuple(devices),
            input_mutated=field(call, "input_mutated", bool),
            shares_memory_with=None if reused is None else first_call + reused,
        ))
    return BatchResult(tuple(results), claim_ns, round_trip_ns)
