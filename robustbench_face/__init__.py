"""robustbench-face: adversarial robustness benchmark for face verification."""

__version__ = "0.1.0"
