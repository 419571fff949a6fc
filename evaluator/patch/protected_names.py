"""What the code outside the EVOLVE-BLOCK names: a patch may not take away a name it relies on.

The fixed code calls the entry point (`run_eplb` calls `rebalance_experts`), lists it in `__all__` and uses the
block's imports (`torch` in its annotations). A patch that renames or removes one of them would apply and fail only
once the program runs; this finds it when the patch is applied.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from evaluator.patch.errors import PatchError, ProtectedRegionError
from evaluator.patch.evolve_block import EditableRange, editable_ranges


def require_protected_names(parent: str, program: str) -> None:
    """Raise `ProtectedRegionError` if `program` no longer defines at its top level a name that its code outside the
    EVOLVE-BLOCK uses and `parent` defined."""
    try:
        ranges = editable_ranges(program.splitlines(keepends=True), "the patched program")
        parent_tree, tree = ast.parse(parent), ast.parse(program)
    except (PatchError, SyntaxError, ValueError, RecursionError, MemoryError):  # not this check's to report
        return
    if ranges is None or _imports_everything(tree):
        return
    uses = _protected_uses(tree, ranges)
    missing = sorted((set(uses) & _top_level_names(parent_tree)) - _top_level_names(tree))
    if missing:
        listed = "; ".join(f"`{name}` ({', '.join(uses[name])})" for name in missing)
        raise ProtectedRegionError(
            f"the patch takes away {listed}, which the code outside the EVOLVE-BLOCK names. Keep defining "
            f"{'it' if len(missing) == 1 else 'each'} at the top level of the program under the same name: that "
            "code cannot change, and the evaluator calls the program through it"
        )


def protected_names(program: str) -> list[str]:
    """The names defined at `program`'s top level that its code outside the EVOLVE-BLOCK uses, sorted; none if the
    program does not parse or has no block."""
    try:
        ranges = editable_ranges(program.splitlines(keepends=True))
        tree = ast.parse(program)
    except (PatchError, SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    if ranges is None:
        return []
    return sorted(set(_protected_uses(tree, ranges)) & _top_level_names(tree))


def _protected_uses(tree: ast.Module, ranges: list[EditableRange]) -> dict[str, list[str]]:
    """Per name the protected statements load (or list in `__all__`), where: "line 245", "`__all__`"."""
    uses: dict[str, list[str]] = {}
    for statement in tree.body:
        first, last = statement.lineno - 1, (statement.end_lineno or statement.lineno) - 1
        if any(not (last < r.first or first > r.last) for r in ranges):
            continue
        for node in ast.walk(statement):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                uses.setdefault(node.id, []).append(f"line {node.lineno}")
        for name in _listed_in_all(statement):
            uses.setdefault(name, []).append("`__all__`")
    return {name: list(dict.fromkeys(where)) for name, where in uses.items()}


def _listed_in_all(statement: ast.stmt) -> Iterator[str]:
    if (isinstance(statement, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in statement.targets)
            and isinstance(statement.value, (ast.List, ast.Tuple))):
        yield from (item.value for item in statement.value.elts
                    if isinstance(item, ast.Constant) and isinstance(item.value, str))


def _top_level_names(tree: ast.Module) -> set[str]:
    """Names bound at module level: definitions, imports and assignments, also under a top-level if, try, with or
    loop (not inside functions or classes)."""
    names: set[str] = set()
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            pending.extend(node.decorator_list)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif not isinstance(node, (ast.Lambda, ast.GeneratorExp, ast.ListComp, ast.SetComp, ast.DictComp)):
            pending.extend(ast.iter_child_nodes(node))
    return names


def _imports_everything(tree: ast.Module) -> bool:
    """A top-level `from module import *` may define anything: nothing is required then."""
    return any(isinstance(node, ast.ImportFrom) and any(alias.name == "*" for alias in node.names)
               for node in tree.body)
