"""Names of the built-in policies and the module that implements each, importable without numpy or torch.

`policy.base.make_policy` imports a policy's module the first time its name is asked for, so building a
classic rule never loads the learned model's torch code, and a command line can list the names at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

#: Built-in policy name -> the module whose import registers it (with `policy.base.register`).
BUILTIN_POLICIES: Mapping[str, str] = MappingProxyType(
    {
        "fixed": "policy.classic",
        "bba": "policy.classic",
        "rb": "policy.classic",
        "bola": "policy.classic",
        "mpc": "policy.mpc",
        "robustmpc": "policy.mpc",
        "clairvoyant": "policy.clairvoyant",
        "optimal": "policy.optimal",
        "checkpoint": "policy.learned",
        "model": "policy.learned",
        "default": "policy.learned",
    }
)

__all__ = ["BUILTIN_POLICIES"]
