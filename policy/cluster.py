"""Ray for scale-out (the optional ``resin-abr[ray]`` extra): finding the module and joining a cluster.

``--ray local`` starts a Ray instance on this machine; ``--ray ADDRESS`` (``ray://host:10001`` or
``host:6379``) joins a running cluster. Every node needs the project installed and the trace files at
the same paths as the driver (file paths travel, not file contents).
"""

from __future__ import annotations

from typing import Any

INSTALL_HINT = "Ray is not installed: pip install 'resin-abr[ray]' (or pip install ray)"


def ray_module() -> Any:
    """The ``ray`` module, or a clear error naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    return ray


def connect(address: str, *, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address``, or start a local instance for ``local`` (idempotent)."""
    ray = ray_module()
    if ray.is_initialized():
        return
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as err:  # Ray raises ConnectionError, RuntimeError, ValueError... for a bad address
        raise ValueError(f"--ray {address}: cannot connect to a Ray cluster there ({err})") from None
