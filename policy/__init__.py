"""ABR policies: the batched `Policy` interface, a registry, classic rules and evaluation."""

from policy import clairvoyant as clairvoyant  # registers clairvoyant
from policy import classic as classic  # registers the classic rules
from policy import learned as learned  # registers checkpoint:PATH, default
from policy import mpc as mpc  # registers mpc, robustmpc
from policy import optimal as optimal  # registers optimal
from policy.base import Policy, PolicyConfig, PolicySpecError, available_policies, make_policy, register

__all__ = ["Policy", "PolicyConfig", "PolicySpecError", "available_policies", "make_policy", "register"]
