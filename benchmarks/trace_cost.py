"""The fixed cost of a training run: tracing and first call of the training step, Keras' Adam vs the fused one.

Builds the model of a recipe (``configs/NAME.json``) the way ``training.build_model`` does, once with Keras 3's
own Adam update (about 25 ops per variable) and once with :func:`medseg_tf.schedules.fuse_adam_update` (one
``ResourceApplyAdam`` kernel per variable), alternating, and prints for each: the ops in the traced step,
seconds to trace it, seconds of its first call (TensorFlow's graph optimisation and the kernels' set-up),
the median of the following steps in ms; then the update alone (all the recipe's variables, random
gradients), ms per call. Then the weights after the steps: the fused update against
Keras', and, for scale, Keras' update against itself with one float32 ulp added to every weight after the
first step. The two updates agree to rounding in one step (``tests/test_training.py``); over several steps
Adam amplifies rounding differences, and the one-ulp control shows by how much::

    python benchmarks/trace_cost.py --config phantom_2d --steps 15 --repeats 2
"""

from __future__ import annotations

import argparse
import time

import medseg_tf  # noqa: F401  (first: oneDNN on)
import keras
import numpy as np
import tensorflow as tf

from medseg_tf import settings, training
from medseg_tf.schedules import fuse_adam_update


def measure(config, fused: bool, steps: int, ulp: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
    runtime = training.resolve_runtime(config)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((config.batch_size, *config.patch_size, 1)).astype("float32"))
    y = tf.constant(rng.integers(0, 3, (config.batch_size, *config.patch_size)).astype("int32"))
    keras.utils.set_random_seed(0)
    model = training.build_model(config, 3, ["background", "a", "b"], runtime)
    if not fused:  # build_model fuses; undo it for the comparison
        vars(model.optimizer).pop("update_step", None)
    else:
        fuse_adam_update(model.optimizer)
    step = tf.function(model.train_step)
    start = time.perf_counter()
    graph = step.get_concrete_function((x, y)).graph
    trace_s = time.perf_counter() - start
    start = time.perf_counter()
    step((x, y))
    first_s = time.perf_counter() - start
    if ulp:  # the control: one float32 ulp up on every weight
        for variable in model.trainable_variables:
            variable.assign(np.nextafter(variable.numpy(), np.float32(np.inf)))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        float(step((x, y))["loss"])
        times.append(time.perf_counter() - start)
    row = {"update": "fused" if fused else "keras", "ops": len(graph.get_operations()),
           "trace_s": round(trace_s, 2), "first_call_s": round(first_s, 2),
           "step_ms": round(1000 * float(np.median(times)), 1)}
    return row, {v.path: v.numpy() for v in model.trainable_variables}


def update_alone(config, repeats: int = 50) -> dict[str, float]:
    """ms of one optimizer update of all the recipe's variables (random gradients), Keras' Adam vs the fused."""
    from medseg_tf.models import unet

    shapes = [tuple(v.shape) for v in unet((None,) * config.dims + (1,), 3, **config.model).trainable_variables]
    rng = np.random.default_rng(0)
    grads = [tf.constant(rng.normal(size=shape).astype("float32")) for shape in shapes]
    result = {}
    for fused in (False, True):
        variables = [keras.Variable(rng.normal(size=shape).astype("float32")) for shape in shapes]
        optimizer = keras.optimizers.Adam(1e-3)
        optimizer.build(variables)
        if fused:
            fuse_adam_update(optimizer)
        apply = tf.function(lambda gs: optimizer.apply_gradients(zip(gs, variables)))
        apply(grads)
        start = time.perf_counter()
        for _ in range(repeats):
            apply(grads)
        float(variables[0].numpy().ravel()[0])
        result["fused" if fused else "keras"] = round(1000 * (time.perf_counter() - start) / repeats, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="phantom_2d", help="a recipe in configs/ (default phantom_2d)")
    parser.add_argument("--steps", type=int, default=15, help="steps after the first one (default 15)")
    parser.add_argument("--repeats", type=int, default=2, help="pairs of builds (default 2)")
    args = parser.parse_args()
    config = training.TrainConfig.from_json(settings.REPO_ROOT / "configs" / f"{args.config}.json")
    print(training.describe_runtime(config), "|", args.config, "| batch", config.batch_size,
          "| patch", config.patch_size)
    weights = {}
    for _ in range(args.repeats):
        for fused in (False, True):
            row, weights[fused] = measure(config, fused, args.steps)
            print("  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    print("one update of all variables alone, ms:", update_alone(config))
    control = measure(config, False, args.steps, ulp=True)[1]
    for name, other in (("fused vs Keras' update", weights[True]),
                        ("Keras' update vs itself + 1 ulp after step 1", control)):
        diffs = {path: float(np.abs(weights[False][path] - other[path]).max()) for path in weights[False]}
        print(f"{name}, after {args.steps + 1} steps: largest weight difference {max(diffs.values()):.2e}, "
              f"median over the variables {np.median(list(diffs.values())):.1e}")

if __name__ == "__main__":
    main()
