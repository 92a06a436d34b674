"""Declarative sweep specs: TOML files that name an attack and its budgets.

The specs of the robustness figures of Dammu et al. (2021) ship with the
package, from the repository's `attacks/` folder. `frb run --spec NAME`
loads one of those, and `--spec FILE.toml` loads any file of the same shape.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import FrbError

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
