"""Lava integration.

- ``compat``: import-time compatibility fixes (call ``ensure_lava_importable()`` before ``import lava``).
- ``procs``: the Lava Processes (``GatedIF`` and ``Readout`` with their incoming synapses, ``PixelInput``, ``EventCount``)
  and their ``fixed_pt`` / ``floating_pt`` CPU models; nothing else lives in that package.
- ``build``: network IR or bsnn netx HDF5 file -> Lava process graph.
- ``run``: ``run_lava(...)`` -> ``bsnn_lava.sim.SimResult``, spike-exact with the reference simulator on
  Lava's CPU backend; ``backend="loihi2"`` needs lava-loihi and chip models (see docs/loihi.md).
"""
