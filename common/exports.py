"""A package's public names imported from their modules on first use (PEP 562 module `__getattr__`), so that
importing one light submodule does not import the heavy ones (CompressAI, the models, matplotlib)."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, namespace: dict, exports: dict[str, list[str]]) -> tuple[list[str], Callable, Callable]:
    """(__all__, __getattr__, __dir__) for `package`, whose globals are `namespace`; exports: module -> names."""
    module_of = {name: module for module, names in exports.items() for name in names}

    def get(name: str):
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_of[name]), name)
        namespace[name] = value  # later look-ups find it without calling __getattr__
        return value

    def listing() -> list[str]:
        return sorted(set(namespace) | set(module_of))

    return sorted(module_of), get, listing
