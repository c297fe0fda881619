"""ABR policies: the batched `Policy` interface, a registry, classic rules and evaluation.

The rules' modules are imported when `make_policy` first builds one of theirs (`policy.names` lists
them), so importing this package never loads torch; import a rule's module to use its classes directly.
"""

from policy.base import Policy, PolicyConfig, PolicySpecError, available_policies, make_policy, register

__all__ = ["Policy", "PolicyConfig", "PolicySpecError", "available_policies", "make_policy", "register"]
