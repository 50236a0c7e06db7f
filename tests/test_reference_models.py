"""The shipped reference models (and their ensemble) reproduce the numbers of their model cards."""

import json
import os
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["hippocampus_2d", "hippocampus_2d_seed1", "hippocampus_3d"]
# shipped ensembles: their members; the last member's folder holds metrics_val_ensemble.csv
ENSEMBLES = [("hippocampus_2d", "hippocampus_2d_seed1")]


def _repredict(model_dirs, table: pd.DataFrame, val_ids, hippocampus_root, tmp_path) -> None:
    """Re-predict 4 held-out cases from scratch, as a user would, and compare with a card's per-case table."""
    from medseg_tf.inference import predict_folder
    from medseg_tf.metrics import evaluate_folder

    assert sorted(set(table["case"])) == sorted(val_ids)
    chosen = sorted(val_ids)[:4]
    images = tmp_path / "images"
    images.mkdir()
    for case_id in chosen:
        os.symlink((hippocampus_root / "imagesTr" / f"{case_id}.nii.gz").resolve(), images / f"{case_id}.nii.gz")
    predict_folder(model_dirs, images, tmp_path / "pred", progress=False)
    again = evaluate_folder(tmp_path / "pred", hippocampus_root / "labelsTr", progress=False)
    merged = again.merge(table, on=["case", "class"], suffixes=("", "_card"))
    assert len(merged) == 2 * len(chosen)
    pd.testing.assert_series_equal(merged["dice"], merged["dice_card"], check_names=False, atol=1e-4)
    pd.testing.assert_series_equal(merged["hd95"], merged["hd95_card"], check_names=False, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_reference_model_reproduces_model_card(name, hippocampus_root, tmp_path):
    model_dir = ROOT / "models" / name
    if not (model_dir / "model.keras").is_file():
        pytest.skip(f"{model_dir} is not shipped yet")
    assert (model_dir / "MODEL_CARD.md").is_file()
    assert (model_dir / "model.keras").stat().st_size < 10e6  # no optimizer state, capped widths: a few MB
    val_ids = json.loads((model_dir / "split.json").read_text())["val"]
    _repredict(model_dir, pd.read_csv(model_dir / "metrics_val.csv"), val_ids, hippocampus_root, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("members", ENSEMBLES, ids="+".join)
def test_reference_ensemble_reproduces_model_cards(members, hippocampus_root, tmp_path):
    dirs = [ROOT / "models" / name for name in members]
    if not all((d / "model.keras").is_file() for d in dirs):
        pytest.skip(f"{', '.join(members)}: not all shipped yet")
    heading = f"## Ensemble of {' and '.join(members)}"
    for d in dirs:  # every member's card describes the ensemble
        assert heading in (d / "MODEL_CARD.md").read_text(encoding="utf-8")
    splits = [json.loads((d / "split.json").read_text())["val"] for d in dirs]
    assert all(sorted(s) == sorted(splits[0]) for s in splits)  # one held-out set for all members
    table = pd.read_csv(dirs[-1] / "metrics_val_ensemble.csv")
    _repredict(dirs, table, splits[0], hippocampus_root, tmp_path)
