"""Declarative sweep specs, installed as the package robustbench_face.sweep_specs."""
