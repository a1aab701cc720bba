"""The rung ladder of multi-objective early stopping (scheduler.MOASHA): budgets in optimizer steps,
⌈grace·η^k⌉ for k = 0, 1, …. A leaf: the spec checks a method's first rung (grace_per_method) against
it when it loads, before anything runs; the scheduler and analysis.replay_rungs place curve points on it."""
from __future__ import annotations

import math

TIE_BREAKS = ("crowding", "eps_net")   # inside a rung's cut-off front (scheduler.priorities)


def budgets(grace: int, eta: float, upto: int) -> list[int]:
    """The rungs' budgets ⌈grace·η^k⌉ (k = 0, 1, …) up to `upto` steps, increasing, no repeats."""
    out, k = [], 0
    while True:
        b = math.ceil(grace * eta ** k - 1e-9)        # 1e-9: 3·3² is 27, not 27.000000000000004
        if b > upto:
            return out
        if not out or b > out[-1]:
            out.append(b)
        k += 1


def off_ladder(grace: int, eta: float, first: int) -> list[int] | None:
    """None when `first` is one of the rungs; else the ladder up to one rung past it (for the error)."""
    ladder = budgets(grace, eta, max(first, grace) * eta)
    return None if first in ladder else ladder
