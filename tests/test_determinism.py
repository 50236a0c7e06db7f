"""Training gives the same numbers on the same machine (what a re-run notebook relies on)."""

import json
import subprocess
import sys

import pytest

TRAIN_AND_PRINT = """
import json, sys
from medseg_tf.training import TrainConfig, read_history, train
run = train(TrainConfig.from_json(sys.argv[1]), overwrite=True, verbose=0)
print(json.dumps(read_history(run / "history.csv")))
"""


@pytest.mark.slow
def test_same_seed_same_history_in_a_fresh_process(phantom_root, tmp_path):
    """The same config and seed give a bit-identical history here and in a new Python process.

    The new process starts from scratch (as a notebook re-run does), while this one has already run
    other tests: every random choice must come from the config's seed, not from leftover state.
    Augmentation is on, so its stateless seeds are covered too.
    """
    from medseg_tf.training import TrainConfig, read_history, train

    config = TrainConfig(data=str(phantom_root), dims=2, patch_size=(32, 32), max_cases=4,
                         model={"depth": 2, "base_filters": 4}, learning_rate=1e-2, epochs=2,
                         steps_per_epoch=2, batch_size=2, seed=3, out_dir=str(tmp_path / "here"))
    path = tmp_path / "config.json"
    config.replace(out_dir=str(tmp_path / "there")).to_json(path)
    # the fresh process starts first and imports TensorFlow while this one trains (2 cores)
    fresh = subprocess.Popen([sys.executable, "-c", TRAIN_AND_PRINT, str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    here = read_history(train(config, verbose=0) / "history.csv")
    stdout, stderr = fresh.communicate(timeout=300)
    assert fresh.returncode == 0, stderr[-2000:]
    there = json.loads(stdout.strip().splitlines()[-1])
    assert len(here) == 2
    assert here[0]["loss"] != here[1]["loss"]  # it trained
    assert here == there  # exact: same losses and Dice to the last bit
