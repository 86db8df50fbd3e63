"""Reference simulator (torch): exact step semantics, window fast path, the equivalent ANN."""
from .ann import ann_forward, frame_forward
from .compare import PairedComparison, compare_runs
from .reference import simulate, window_path_applies
from .result import SimResult, StreamRecord

__all__ = ["ann_forward", "frame_forward", "compare_runs", "PairedComparison", "simulate", "window_path_applies", "SimResult", "StreamRecord"]
