"""`models`, `losses` and `bench` on a synthetic batch need only Keras: they run under KERAS_BACKEND=jax.

The child process blocks every TensorFlow import (Keras itself imports TensorFlow opportunistically
when it is installed; with the block it does not), so the test proves the code does not need it.
Skipped when jax is not installed.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")

CHILD = r"""
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tf_keras"):
            raise ImportError(name + " is blocked in this test")
sys.meta_path.insert(0, _Block())
import json
import numpy as np
import keras
from medseg_tf import benchmark, losses, models

out = {"backend": keras.backend.backend()}
rng = np.random.default_rng(0)
keras.utils.set_random_seed(0)
net = models.unet((None, None, None, 1), 3, depth=1, base_filters=4)  # JAX compiles every initializer: keep it small
y = keras.ops.convert_to_numpy(net(rng.standard_normal((1, 16, 16, 8, 1)).astype("float32"), training=False))
out["unet3d"] = [list(y.shape), float(np.abs(y.sum(-1) - 1).max())]
x, labels = benchmark.synthetic_batch(2, (16, 16), 3, seed=1)
probs = rng.dirichlet(np.ones(3), size=(2, 16, 16)).astype("float32")
out["dice_ce"] = float(keras.ops.convert_to_numpy(losses.DiceCELoss()(labels, probs)))
out["dice"] = float(keras.ops.convert_to_numpy(losses.DiceLoss()(labels, probs)))
rows = benchmark.bench(dims=(2,), quick=True, progress=False)
out["rows"] = [{k: r.get(k) for k in ("kind", "backend", "xla", "samples_per_s", "params", "peak_fraction")}
               for r in rows]
out["tensorflow_loaded"] = "tensorflow" in sys.modules
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_models_losses_and_bench_run_under_jax_without_tensorflow():
    from medseg_tf import benchmark, losses

    # XLA's backend optimisation off: each tiny initializer took about 2 s to compile on a 2-core AVX2 CPU
    # (10 of them: 20 s of a 45 s test), 0.1 s without; this test checks results and code paths, not speed
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip())
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["backend"] == "jax" and out["tensorflow_loaded"] is False
    assert out["unet3d"][0] == [1, 16, 16, 8, 3] and out["unet3d"][1] < 1e-5  # softmax over classes
    # the same losses as on this process's backend (TensorFlow), on the same arrays
    rng = np.random.default_rng(0)
    rng.standard_normal((1, 16, 16, 8, 1))  # keep the child's random stream
    _, labels = benchmark.synthetic_batch(2, (16, 16), 3, seed=1)
    probs = rng.dirichlet(np.ones(3), size=(2, 16, 16)).astype("float32")
    assert out["dice_ce"] == pytest.approx(float(losses.DiceCELoss()(labels, probs)), abs=1e-5)
    assert out["dice"] == pytest.approx(float(losses.DiceLoss()(labels, probs)), abs=1e-5)
    kinds = [r["kind"] for r in out["rows"]]
    assert kinds == ["train", "infer"]
    for row in out["rows"]:
        assert row["backend"] == "jax" and row["xla"] is True  # JAX always compiles
        assert row["samples_per_s"] > 0 and row["params"] > 0 and 0 < row["peak_fraction"]
