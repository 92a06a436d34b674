"""Turn a pytest-benchmark JSON file into the Markdown table of docs/benchmarks.md.

Usage: python benchmarks/report.py /tmp/bench.json > docs/benchmarks.md
"""

from __future__ import annotations

import json
import platform
import sys
from collections import defaultdict

SWEEP_POINTS = 11  # FGSM and FFGSM budgets, eps 0 to 0.1
DEEPFOOL_STEPS = 10
DEEPFOOL_PAIRS = 8  # pairs of the DeepFool benchmarks


def main(path: str) -> None:
    data = json.loads(open(path, encoding="utf-8").read())
    times: dict[str, dict[str, float]] = defaultdict(dict)
    for bench in data["benchmarks"]:
        name = bench["name"].split("[")[0].removeprefix("test_")
        model = bench["params"].get("model_name", "?") if bench.get("params") else "?"
        times[model][name] = bench["stats"]["median"]

    machine = data.get("machine_info", {})
    print("# Benchmarks: the cost of a robustness sweep\n")
    print(f"Machine: {machine.get('cpu', {}).get('brand_raw', platform.processor())}, "
          f"{machine.get('cpu', {}).get('count', '?')} logical cores; Python {machine.get('python_version', '?')}; "
          f"run {data.get('datetime', '?')[:19]}.\n")
    print("Command: `python -m pytest benchmarks --benchmark-json=/tmp/bench.json` "
          "then `python benchmarks/report.py /tmp/bench.json`.\n")
    print("Times are medians of 3 rounds, in seconds, on 32 fold-1 LFW pairs at batch 32 "
          "(DeepFool: 8 pairs). Every sweep scores each budget: FGSM and FFGSM with one forward pass per "
          "budget, DeepFool from the forward passes its steps take anyway. "
          "The floor is one forward plus backward pass per gradient step plus one forward pass per budget.\n")
    for model, t in times.items():
        fb, f = t["forward_backward"], t["forward"]
        fb8, f8 = t["deepfool_forward_backward"], t["deepfool_forward"]
        floors = {
            "fgsm": fb + SWEEP_POINTS * f,
            "ffgsm": SWEEP_POINTS * (fb + f),
            "deepfool": DEEPFOOL_STEPS * (fb8 + f8),
        }
        print(f"## {model}\n")
        print(f"Forward pass: {1000 * f / 32:.1f} ms per image; forward plus backward: {1000 * fb / 32:.1f} ms per image.\n")
        print("| attack | our sweep | floor | sweep / floor | torchattacks loop | loop / sweep | torchattacks, largest budget only | sweep / largest |")
        print("|---|---|---|---|---|---|---|---|")
        for attack in ("fgsm", "ffgsm", "deepfool"):
            sweep = t[f"{attack}_sweep"]
            largest = t[f"{attack}_torchattacks_largest"]
            loop = t.get(f"{attack}_torchattacks_loop")
            loop_text = f"{loop:.3f}" if loop is not None else "n/a"
            loop_ratio = f"{loop / sweep:.1f}" if loop is not None else "n/a"
            print(
                f"| {attack} | {sweep:.3f} | {floors[attack]:.3f} | {sweep / floors[attack]:.2f} | {loop_text} | "
                f"{loop_ratio} | {largest:.3f} | {sweep / largest:.2f} |"
            )
        single = t.get("deepfool_single_image_step")
        if single is not None:
            print(f"One torchattacks-style DeepFool step: {1000 * single / DEEPFOOL_PAIRS:.1f} ms per pair; "
                  f"one batched step: {1000 * fb8 / DEEPFOOL_PAIRS:.1f} ms per pair (ratio {single / fb8:.1f}).\n")
        print()


if __name__ == "__main__":
    main(sys.argv[1])
