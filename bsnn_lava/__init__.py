"""bsnn-lava: PyTorch ReLU networks -> bistable spiking networks for Loihi (Lava, netx HDF5).

The public API, imported lazily so that light modules (``bsnn_lava.dynamics``, the Lava process
models) never pull in torch:

- :func:`convert` (``bsnn_lava.conversion``): trained model + calibration images -> network IR.
- :func:`simulate` (``bsnn_lava.sim``): reference simulation, accuracy at every step and counts.
- :func:`finetune` (``bsnn_lava.training``): window-aware fine-tuning (clip-floor-shift activations)
  for a conversion that is exact after one frame.
- :mod:`zoo`: CIFAR ResNets (``cifar_resnet(depth)``, ``load_checkpoint(path)``).
"""
import importlib

__version__ = "0.1.0"

_LAZY = {"convert": ("bsnn_lava.conversion", "convert"), "simulate": ("bsnn_lava.sim", "simulate"),
         "SimResult": ("bsnn_lava.sim", "SimResult"), "Network": ("bsnn_lava.ir", "Network"),
         "finetune": ("bsnn_lava.training", "finetune"), "zoo": ("bsnn_lava.zoo", None)}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'bsnn_lava' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    return module if attr is None else getattr(module, attr)
