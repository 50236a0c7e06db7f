"""The 2D training input pipeline alone (no model): augmented 2.5D slices per second; measures, writes nothing.

    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python benchmarks/pipeline_alone.py [--steps 150]

The shipped 2D recipe's pipeline (batch 16, 48x64 crops, two context slices on each side) over all
hippocampus cases, with the default augmentation and without, after 10 warm-up batches. Compare the rate with
the model's training rate (``python -m medseg_tf bench``): the pipeline shares the CPU with the model, so
its cost in training is roughly the model's rate divided by this one. Run it at two commits to compare
pipeline versions (the element stream is the same; ``tests/test_pipeline.py`` checks the chunking).
"""

from __future__ import annotations

import argparse
import os
import time


def measure(augment: bool, steps: int, batch_size: int = 16) -> float:
    from medseg_tf.training import TrainConfig, load_volumes, make_datasets, open_dataset

    config = TrainConfig(data="hippocampus", dims=2, batch_size=batch_size, seed=0, augment=augment,
                         context_slices=2, patch_size=(48, 64), epochs=1, steps_per_epoch=steps,
                         schedule="constant")
    dataset = open_dataset(config.data)
    images, labels = load_volumes(dataset, dataset.case_ids, target_spacing=None)
    train, _, _ = make_datasets(config, (images, labels), (images[:1], labels[:1]), global_batch_size=batch_size)
    batches = iter(train)
    for _ in range(10):
        next(batches)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return batch_size * steps / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="timed batches (default 150)")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    load = os.getloadavg()[0]
    for augment in (True, False):
        print(f"augmentation {'on ' if augment else 'off'}: {measure(augment, args.steps):.0f} slices/s", flush=True)
    print(f"load average at the start: {load:.2f} (2D shipped recipe's pipeline, all cases)")
    os._exit(0)  # tf.data's generator iterators can hang at interpreter shutdown


if __name__ == "__main__":
    raise SystemExit(main())
