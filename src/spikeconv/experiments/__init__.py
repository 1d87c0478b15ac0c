"""Experiments built from the public API, each returning a JSON-ready record."""

from .compare import DEFAULT_STEPS, RuleSetting, compare_rules, markdown_table
from . import yang
from .demo import run_demo

__all__ = ["DEFAULT_STEPS", "RuleSetting", "compare_rules", "markdown_table", "run_demo", "yang"]
