"""The install works as the README says: Lava runs on this Python, imports stay one-way."""
import subprocess
import sys

import numpy as np


def test_lava_runs_a_process_on_this_python():
    from bsnn_lava.lava.compat import ensure_lava_importable

    ensure_lava_importable()
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.dense.process import Dense
    from lava.proc.io.source import RingBuffer
    from lava.proc.lif.process import LIF

    source = RingBuffer(data=np.ones((2, 6)))
    dense = Dense(weights=np.eye(2) * 2)
    lif = LIF(shape=(2,), du=4095, dv=0, vth=3)
    source.s_out.connect(dense.s_in)
    dense.a_out.connect(lif.a_in)
    try:
        lif.run(condition=RunSteps(num_steps=6), run_cfg=Loihi2SimCfg(select_tag="floating_pt"))
        v = lif.v.get()
    finally:
        lif.stop()
    assert v.shape == (2,) and np.all(v >= 0)


def test_netx_imports_with_the_torchvision_stand_in():
    code = ("from bsnn_lava.lava.compat import ensure_netx_importable; ensure_netx_importable(); "
            "from lava.lib.dl import netx; print(netx.hdf5.Network.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("Network")


def test_light_modules_do_not_import_torch():
    """Lava's forked workers hang with torch: the neuron arithmetic must not pull it in."""
    code = ("import sys, bsnn_lava, bsnn_lava.dynamics, bsnn_lava.ir, bsnn_lava.lava.compat; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
