"""Packages whose names import their module when first used (PEP 562), so that `import groundup` and the CLI's
`--help` do not pay for torch until something that needs it is touched."""

from __future__ import annotations

import importlib
import sys
import types


class _LazyPackage(types.ModuleType):
    _exports: dict[str, str]

    def __getattr__(self, name: str):
        module = self._exports.get(name)
        if module is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, self.__name__), name)
        self.__dict__[name] = value
        return value

    def __setattr__(self, name: str, value) -> None:
        # Importing a submodule binds it on its package; where an exported name is also a submodule's
        # (groundup.generate the function and groundup/generate.py), the export keeps the name.
        if isinstance(value, types.ModuleType) and name in self._exports:
            return
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._exports})


def lazy_exports(package: str, parts: dict[str, str]) -> list[str]:
    """Make `package` import each name from its submodule on first use. `parts` maps a relative module (".chat")
    to the names it gives, space-separated. Returns the names, for the package's __all__."""
    exports = {name: module for module, names in parts.items() for name in names.split()}
    pkg = sys.modules[package]
    pkg.__class__ = _LazyPackage
    object.__setattr__(pkg, "_exports", exports)
    return list(exports)
