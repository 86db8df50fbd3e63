"""Window-aware fine-tuning: clip-floor-shift activations for exact low-latency BSNN conversion."""
from .activation import ClipFloorShift, calibrate_thresholds, clip_floor_shift_model, clip_floor_shift_modules
from .trainer import CHECKPOINT_KEY, finetune, rebuild, restore, save_checkpoint

__all__ = ["ClipFloorShift", "clip_floor_shift_model", "clip_floor_shift_modules", "calibrate_thresholds",
           "finetune", "rebuild", "restore", "save_checkpoint", "CHECKPOINT_KEY"]
