"""torch as it was before a candidate's import, for the worker's checks of a call (its input unchanged, its outputs).

A program runs in the worker's process and may patch anything Python can reach there. The checks therefore call tensor
methods taken from torch's C type, which a program cannot reassign (patching `torch.Tensor.clone` reaches only
`torch.Tensor`), and what lies below them, a mode left active or a kernel of the program's own registered for an
operator the checks run, is looked for after the import and after every batch.
"""

from __future__ import annotations

from typing import Any

# what the worker's checks run: staging and copying the inputs, comparing them, copying the outputs out
CHECKED_OPERATORS = ("aten::clone", "aten::copy_", "aten::equal", "aten::_to_copy", "aten::view", "aten::view.dtype",
                     "aten::slice.Tensor", "aten::detach", "aten::alias")


class TorchAsImported:
    """Tensor methods and properties as plain functions (`clone(tensor)`, `dtype(tensor)`), bound when this is made,
    and the dispatcher's state then, which `interposed` compares with the state now."""

    def __init__(self, torch: Any) -> None:
        base = torch._C.TensorBase
        self.clone = base.clone
        self.to = base.to
        self.copy_ = base.copy_
        self.detach = base.detach
        self.view = base.view
        self.slice = base.__getitem__
        self.numel = base.numel
        self.element_size = base.element_size
        self.untyped_storage = base.untyped_storage
        self.dtype = base.__dict__["dtype"].__get__
        self.shape = base.__dict__["shape"].__get__
        self.layout = base.__dict__["layout"].__get__
        self.device = base.__dict__["device"].__get__
        self.storage_pointer = torch._C.StorageBase.data_ptr
        self.storage_bytes = torch._C.StorageBase.nbytes
        self._c = torch._C
        self._dispatch_dump = torch._C._dispatch_dump
        self._dispatcher = self._dispatcher_state()

    def _dispatcher_state(self) -> tuple[tuple[str, ...], str, str]:
        return (tuple(self._dispatch_dump(name) for name in CHECKED_OPERATORS),
                str(self._c._dispatch_tls_local_include_set()), str(self._c._dispatch_tls_local_exclude_set()))

    def interposed(self) -> str | None:
        """What the program has put between the worker's checks and torch since this was made, in words; None if
        nothing."""
        if self._c._len_torch_function_stack():
            return "a torch function mode (torch.overrides.TorchFunctionMode) is still active"
        if self._c._len_torch_dispatch_stack():
            return "a torch dispatch mode (TorchDispatchMode) is still active"
        dumps, included, excluded = self._dispatcher_state()
        replaced = [name for name, before, now in zip(CHECKED_OPERATORS, self._dispatcher[0], dumps) if before != now]
        if replaced:
            return f"kernels of its own are registered for {', '.join(replaced)}"
        if (included, excluded) != self._dispatcher[1:]:
            return "the dispatch keys the worker's thread includes or excludes were changed"
        return None
