"""The light name lists (`policy.names`, `plasticity.names`) agree with the modules that implement them."""

from __future__ import annotations

import importlib
import subprocess
import sys

from plasticity.names import METHODS
from policy import available_policies, make_policy
from policy.base import _REGISTRY
from policy.names import BUILTIN_POLICIES


def test_every_builtin_policy_is_registered_by_its_module() -> None:
    for module in set(BUILTIN_POLICIES.values()):
        importlib.import_module(module)
    builtin = {name: cls for name, cls in _REGISTRY.items() if cls.__module__.startswith("policy.")}
    assert set(builtin) == set(BUILTIN_POLICIES)
    for name, cls in builtin.items():
        assert cls.__module__ == BUILTIN_POLICIES[name]
        assert cls.name == name


def test_available_policies_lists_modules_not_yet_imported() -> None:
    assert set(BUILTIN_POLICIES) <= set(available_policies())
    assert available_policies() == sorted(available_policies())


def test_a_classic_rule_does_not_load_torch() -> None:
    probe = "import sys; from policy import make_policy; make_policy('robustmpc'); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == "False"


def test_the_learned_policy_loads_on_demand() -> None:
    assert make_policy("default").name == "default"


def test_every_plasticity_method_name_has_an_implementation() -> None:
    from plasticity.methods import make_method, parse_plasticity

    assert {make_method(parse_plasticity({"method": name})).name for name in METHODS} == set(METHODS)
