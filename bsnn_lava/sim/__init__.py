"""Reference simulator (torch): exact step semantics, window fast path, the equivalent ANN."""
from .ann import ann_forward
from .reference import simulate, window_path_applies
from .result import SimResult

__all__ = ["ann_forward", "simulate", "window_path_applies", "SimResult"]
