"""Adam with a step count per entry, so that resetting a few neurons can restart their moments exactly.

`torch.optim.Adam` keeps one step count per parameter tensor. When a plasticity method re-initialises
some neurons and zeroes their moments, that shared count stays large, bias correction is off for them,
and their first updates come out 3-6x larger than Adam's usual step (``m / sqrt(v)`` of a fresh moment
pair with no correction). `EntryAdam` stores ``step`` with the parameter's shape: resetting an entry's
moments and step makes it exactly a freshly started Adam entry. Without resets it computes Adam's
update (tests compare it with `torch.optim.Adam`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


class EntryAdam(torch.optim.Optimizer):
    """Adam (Kingma & Ba) whose ``state[param]["step"]`` is a float tensor shaped like ``param``."""

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if lr <= 0 or eps <= 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid Adam settings: lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One Adam update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros_like(param)
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                grad = param.grad
                step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
                step.add_(1.0)
                exp_avg.lerp_(grad, 1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                correction1 = 1.0 - torch.pow(beta1, step)
                correction2_sqrt = (1.0 - torch.pow(beta2, step)).sqrt_()
                denom = (exp_avg_sq.sqrt() / correction2_sqrt).add_(group["eps"])
                param.addcdiv_(exp_avg / correction1, denom, value=-group["lr"])
        return loss
