"""Declarative sweep specs: TOML files that name an attack and its budgets.

The specs of the robustness figures of Dammu et al. (2021) ship with the
package, from the repository's `attacks/` folder. `frb run --spec NAME`
loads one of those, and `--spec FILE.toml` loads any file of the same shape.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from ..errors import FrbError
from .budgets import (
    BUDGET_PARAMETER,
    DEFAULT_ALPHA,
    DEFAULT_OVERSHOOT,
    AttackSpec,
    parse_range,
)

SPEC_KEYS = {"attack", "eps", "steps", "alpha", "overshoot"}


def shipped_specs() -> list[str]:
    """Names of the specs that ship with the package."""
    folder = resources.files("robustbench_face.sweep_specs")
    return sorted(entry.name[: -len(".toml")] for entry in folder.iterdir() if entry.name.endswith(".toml"))


def load_spec(name_or_path: str) -> dict[str, Any]:
    """Read a spec by shipped name or file path; returns its keys as given."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise FrbError(f"cannot read spec file {path}: {err.strerror}; check the path") from None
        source = str(path)
    else:
        names = shipped_specs()
        if name_or_path not in names:
            raise FrbError(f"unknown spec {name_or_path!r}; choose one of {', '.join(names)} or give a .toml file")
        text = resources.files("robustbench_face.sweep_specs").joinpath(f"{name_or_path}.toml").read_text("utf-8")
        source = name_or_path
    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise FrbError(f"spec {source} is not valid TOML ({err}); fix the file") from None
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise FrbError(f"spec {source} has unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(SPEC_KEYS))}")
    if "attack" not in spec:
        raise FrbError(f"spec {source} names no attack; add e.g. attack = \"fgsm\"")
    return spec


def build_spec(
    spec_values: dict[str, Any],
    attack: str | None = None,
    eps_text: str | None = None,
    steps_text: str | None = None,
    alpha: float | None = None,
    overshoot: float | None = None,
) -> AttackSpec:
    """Combine a loaded spec (possibly empty) with command-line overrides into an `AttackSpec`."""
    attack = attack or spec_values.get("attack")
    if attack is None:
        raise FrbError("no attack given; pass --attack fgsm|ffgsm|deepfool or --spec NAME")
    if spec_values.get("attack", attack) != attack:
        raise FrbError(f"--attack {attack} contradicts the spec's attack {spec_values['attack']}; drop one")
    if attack not in BUDGET_PARAMETER:
        raise FrbError(f"unknown attack {attack!r} in the spec; choose one of {', '.join(sorted(BUDGET_PARAMETER))}")
    param = BUDGET_PARAMETER[attack]
    other = "steps" if param == "eps" else "eps"
    if (eps_text if other == "eps" else steps_text) is not None:
        raise FrbError(f"--{other} does not apply to {attack}; use --{param}")
    # An --alpha or --overshoot that the attack ignores usually means that
    # the wrong attack was chosen, so it raises an error instead.
    if alpha is not None and attack != "ffgsm":
        raise FrbError(f"--alpha {alpha:g} applies only to ffgsm, not {attack}; drop it or use --attack ffgsm")
    if overshoot is not None and attack != "deepfool":
        raise FrbError(f"--overshoot {overshoot:g} applies only to deepfool, not {attack}; drop it or use --attack deepfool")
    default = "0:0.1:0.01" if param == "eps" else "0:10:1"
    budget_text = eps_text if param == "eps" else steps_text
    # An empty option is a mistake to report, not a request for the default.
    text = budget_text if budget_text is not None else str(spec_values.get(param, default))
    values = parse_range(text, f"--{param}", integer=param == "steps")
    return AttackSpec(
        attack=attack,
        values=values,
        alpha=alpha if alpha is not None else float(spec_values.get("alpha", DEFAULT_ALPHA)),
        overshoot=overshoot if overshoot is not None else float(spec_values.get("overshoot", DEFAULT_OVERSHOOT)),
    )
