"""Attack names, their budget parameter, and `START:STOP:STEP` ranges."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import FrbError

# Each attack's budget parameter, as torchattacks names it.
BUDGET_PARAMETER = {"fgsm": "eps", "ffgsm": "eps", "deepfool": "steps"}

# Limits that catch a typo such as --eps 0:1:0.0000001 before it runs for days.
MAX_BUDGETS = 1000
MAX_STEPS = 1000

# torchattacks' defaults.
DEFAULT_ALPHA = 10 / 255
DEFAULT_OVERSHOOT = 0.02


def parse_range(text: str, option: str, integer: bool = False) -> tuple[float, ...]:
    """Parse `START:STOP:STEP` (stop included) or a comma-separated list.

    Values are rounded to 10 decimals so that 0:0.1:0.01 gives exactly
    0.03 rather than 0.030000000000000002, which keeps CSV keys stable.
    """
    text = text.strip()
    # Examples in the errors match the kind of budget: eps radii or step counts.
    range_example, list_example = ("0:10:1", "0,1,3") if integer else ("0:0.1:0.01", "0,0.01,0.03")
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise FrbError(f"{option} {text!r} must be START:STOP:STEP, e.g. {range_example}")
            start, stop, step = (float(part) for part in parts)
            if not all(math.isfinite(v) for v in (start, stop, step)):
                raise FrbError(f"{option} {text!r} contains a non-finite number; use plain decimals")
            if step <= 0:
                raise FrbError(f"{option} {text!r} has step {step:g}; give a positive step")
            if stop < start:
                raise FrbError(f"{option} {text!r} stops before it starts; give STOP >= START")
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            if count > MAX_BUDGETS:
                raise FrbError(f"{option} {text!r} gives {count} budgets; give at most {MAX_BUDGETS}, e.g. a larger step")
            values = [round(start + i * step, 10) for i in range(count)]
        else:
            values = [round(float(part), 10) for part in text.split(",") if part.strip()]
    except ValueError:
        raise FrbError(f"{option} {text!r} is not a number range; use START:STOP:STEP or a list like {list_example}") from None
    if not values:
        raise FrbError(f"{option} {text!r} contains no values; use START:STOP:STEP or a list like {list_example}")
    if any(not math.isfinite(v) for v in values):
        raise FrbError(f"{option} {text!r} contains a non-finite number; use plain decimals")
    if integer:
        if any(v != int(v) for v in values):
            raise FrbError(f"{option} {text!r} must hold whole numbers, e.g. 0:10:1")
        values = [int(v) for v in values]
    if len(set(values)) != len(values):
        raise FrbError(f"{option} {text!r} repeats a value; list each budget once")
    return tuple(sorted(values))


@dataclass(frozen=True)
class AttackSpec:
    """One attack and the budgets to sweep it over.

    `eps` is an L-infinity radius in pixel scale [0, 1] (FGSM, FFGSM);
    `steps` is DeepFool's number of iterations.
    """

    attack: str
    values: tuple[float, ...]
    alpha: float = DEFAULT_ALPHA
    overshoot: float = DEFAULT_OVERSHOOT

    def __post_init__(self) -> None:
        if self.attack not in BUDGET_PARAMETER:
            raise FrbError(f"unknown attack {self.attack!r}; choose one of {', '.join(BUDGET_PARAMETER)}")
        if self.param == "eps" and any(not 0 <= v <= 1 for v in self.values):
            bad = next(v for v in self.values if not 0 <= v <= 1)
            raise FrbError(f"--eps value {bad:g} is outside [0, 1]; eps is in pixel scale [0, 1], e.g. 0:0.1:0.01")
        if self.param == "steps" and any(v < 0 for v in self.values):
            raise FrbError(f"--steps value {min(self.values)} is negative; give 0 or more steps")
        if not (math.isfinite(self.alpha) and 0 < self.alpha <= 1):
            raise FrbError(f"--alpha {self.alpha:g} is outside (0, 1]; alpha is a step in pixel scale, e.g. 0.0392")
        if not math.isfinite(self.overshoot) or self.overshoot < 0:
            raise FrbError(f"--overshoot {self.overshoot:g} is invalid; give a finite number of 0 or more (default 0.02)")

        if len(self.values) > MAX_BUDGETS:
            raise FrbError(
                f"--{self.param} asks for {len(self.values)} budgets; give at most {MAX_BUDGETS}, e.g. a larger step"
            )
        if self.param == "steps" and max(self.values) > MAX_STEPS:
            raise FrbError(f"--steps value {max(self.values)} is above {MAX_STEPS}; DeepFool converges in far fewer steps")

    @property
    def param(self) -> str:
        return BUDGET_PARAMETER[self.attack]
