"""Metrics computed from saved answers, judgments and per-item results, in the formats of the tools that define them."""
