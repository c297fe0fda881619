"""Names of the plasticity methods, importable without torch (command lines list them in their help).

`plasticity.methods` implements each of them; a test checks that it implements every one.
"""

from __future__ import annotations

from typing import Literal, get_args

#: A method's name (the ``method`` of its config in `plasticity.config`).
MethodName = Literal[
    "none",
    "reset",
    "redo",
    "shrink-perturb",
    "cbp",
    "resin",
    "regrama",
    "l2-init",
    "ln-wd",
    "injection",
    "c-chain",
    "trac",
    "fresh",
]
#: The methods, in the order tables and reports list them.
METHODS: tuple[str, ...] = get_args(MethodName)

__all__ = ["METHODS", "MethodName"]
