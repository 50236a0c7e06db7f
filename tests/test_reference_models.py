"""The shipped reference models reproduce the numbers of their model cards."""

import json
import os
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["hippocampus_2d", "hippocampus_3d"]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_reference_model_reproduces_model_card(name, hippocampus_root, tmp_path):
    from medseg_tf.inference import predict_folder
    from medseg_tf.metrics import evaluate_folder

    model_dir = ROOT / "models" / name
    if not (model_dir / "model.keras").is_file():
        pytest.skip(f"{model_dir} is not shipped yet")
    card = pd.read_csv(model_dir / "metrics_val.csv")
    val_ids = json.loads((model_dir / "split.json").read_text())["val"]
    assert sorted(set(card["case"])) == sorted(val_ids)
    assert (model_dir / "MODEL_CARD.md").is_file()
    assert (model_dir / "model.keras").stat().st_size < 10e6  # no optimizer state, capped widths: a few MB
    # re-predict a few held-out cases from scratch, as a user would
    chosen = sorted(val_ids)[:4]
    images = tmp_path / "images"
    images.mkdir()
    for case_id in chosen:
        os.symlink(hippocampus_root / "imagesTr" / f"{case_id}.nii.gz", images / f"{case_id}.nii.gz")
    predict_folder(model_dir, images, tmp_path / "pred", progress=False)
    again = evaluate_folder(tmp_path / "pred", hippocampus_root / "labelsTr", progress=False)
    merged = again.merge(card, on=["case", "class"], suffixes=("", "_card"))
    assert len(merged) == 2 * len(chosen)
    pd.testing.assert_series_equal(merged["dice"], merged["dice_card"], check_names=False, atol=1e-4)
    pd.testing.assert_series_equal(merged["hd95"], merged["hd95_card"], check_names=False, atol=1e-3)
