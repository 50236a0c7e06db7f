"""Calibrate a trained model on its validation cases: temperature, OOD threshold, and how well they hold.

    python scripts/calibrate_reference_model.py MODEL_DIR [--data DIR] [--overwrite]

The validation cases of ``MODEL_DIR/split.json`` are split deterministically in two halves:

* the **fitting half**: the first ceil(n/2) validation case ids in sorted order that are *not* among the
  real cases shipped in ``data/hippocampus_sample`` (so that the notebooks, which show those cases, only
  show cases the calibration never saw);
* the **held-out half**: all the others (the shipped sample cases included).

On the fitting half it fits the temperature (negative log-likelihood over the voxels near the structure)
and the OOD reference and threshold (the largest OOD score of the fitting cases). On the held-out half
it reports the expected calibration error before and after temperature scaling (same voxels, binning
stated), the Spearman correlation between the per-case uncertainty score and the per-case Dice, the
false alarms of the OOD flag, and the share of deliberately wrong inputs it flags. Everything goes into
``MODEL_DIR/calibration.json`` (only when absent, or with ``--overwrite``), which ``predict`` reads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from medseg_tf import io, metrics, settings, uncertainty  # noqa: E402
from medseg_tf.errors import DataError, MedsegError, OverwriteError  # noqa: E402

RADIUS = 3
N_BINS = 15


def split_halves(val_ids: list[str], sample_ids: set[str]) -> tuple[list[str], list[str]]:
    """(fitting half, held-out half): see the module docstring."""
    ids = sorted(val_ids)
    n_fit = math.ceil(len(ids) / 2)
    fit = [c for c in ids if c not in sample_ids][:n_fit]
    return fit, [c for c in ids if c not in fit]


def mean_dice(labels: np.ndarray, reference: np.ndarray, classes: list[int]) -> float:
    return float(np.mean([metrics.dice(labels == c, reference == c) for c in classes]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="run folder (model.keras, config.json, split.json)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "msd_hippocampus",
                        help="MSD folder holding the validation cases (default ../shared/data/msd_hippocampus)")
    parser.add_argument("--sample", type=Path, default=settings.hippocampus_sample_dir(),
                        help="folder of shipped sample cases kept out of the fitting half")
    parser.add_argument("--rule", choices=("max", "p95"), default="max", help="OOD threshold rule")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing calibration.json")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except MedsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def run(args) -> int:
    from tqdm.auto import tqdm

    from medseg_tf.datasets import MSDDataset
    from medseg_tf.inference import load_run, predict_probabilities

    target = args.model_dir / uncertainty.CALIBRATION_FILE
    if target.exists() and not args.overwrite:
        raise OverwriteError(f"{target}: already exists; pass --overwrite to replace it")
    split_path = args.model_dir / "split.json"
    if not split_path.is_file():
        raise DataError(split_path, "not found; the run folder must list its validation cases")
    val_ids = json.loads(split_path.read_text()).get("val") or []
    if len(val_ids) < 8:
        raise DataError(split_path, f"lists {len(val_ids)} validation cases; calibration needs at least 8")
    sample_ids = ({io.case_id(p) for p in io.nifti_files(args.sample / "imagesTr")}
                  if (args.sample / "imagesTr").is_dir() else set())
    fit_ids, held_ids = split_halves(val_ids, sample_ids)
    dataset = MSDDataset(args.data)
    missing = sorted(set(val_ids) - set(dataset.case_ids))
    if missing:
        raise DataError(args.data, f"lacks {len(missing)} validation case(s) of the model ({', '.join(missing[:3])})")
    model, spec = load_run(args.model_dir)
    classes = list(range(1, dataset.num_classes))
    start = time.perf_counter()

    cases = {}
    for case_id in tqdm(fit_ids + held_ids, desc="predict", unit="case"):
        image_vol, label_vol = dataset.load_case(case_id, ras=True)
        model_input, probs, _ = predict_probabilities(model, image_vol, spec)
        reference = np.asarray(label_vol.data).astype(np.int64)
        labels = probs.argmax(axis=-1)
        cases[case_id] = {"input": model_input, "probs": probs, "ref": reference,
                          "mask": uncertainty.near_structure_mask(reference, labels, radius=RADIUS),
                          "dice": mean_dice(labels, reference, classes), "raw": np.asarray(image_vol.data)}

    def pooled(ids):
        probs = np.concatenate([cases[c]["probs"][cases[c]["mask"]] for c in ids])
        refs = np.concatenate([cases[c]["ref"][cases[c]["mask"]] for c in ids])
        return probs, refs

    def calibration_numbers(ids, t):
        probs, refs = pooled(ids)
        scaled = uncertainty.apply_temperature(probs, t)
        return {"voxels": int(refs.size),
                "ece_before": uncertainty.expected_calibration_error(probs, refs, n_bins=N_BINS),
                "ece_after": uncertainty.expected_calibration_error(scaled, refs, n_bins=N_BINS),
                "nll_before": uncertainty.negative_log_likelihood(probs, refs),
                "nll_after": uncertainty.negative_log_likelihood(probs, refs, temperature=t)}

    fit_probs, fit_refs = pooled(fit_ids)
    temperature = uncertainty.fit_temperature(fit_probs, fit_refs)

    from scipy.stats import spearmanr

    dice = [cases[c]["dice"] for c in held_ids]
    unc_t = [uncertainty.case_uncertainty(uncertainty.apply_temperature(cases[c]["probs"], temperature))
             for c in held_ids]
    unc_1 = [uncertainty.case_uncertainty(cases[c]["probs"]) for c in held_ids]
    rho_t, p_t = spearmanr(unc_t, dice)
    rho_1, p_1 = spearmanr(unc_1, dice)
    all_ids = fit_ids + held_ids     # at T = 1 the score uses nothing fitted, so every validation case may count
    rho_all, p_all = spearmanr([uncertainty.case_uncertainty(cases[c]["probs"]) for c in all_ids],
                               [cases[c]["dice"] for c in all_ids])

    def stats_of(model_input, probs):
        return uncertainty.case_statistics(model_input, uncertainty.apply_temperature(probs, temperature),
                                           radius=RADIUS)

    ood = uncertainty.fit_ood([stats_of(cases[c]["input"], cases[c]["probs"]) for c in fit_ids],
                              rule=args.rule, radius=RADIUS)
    held_scores = {c: uncertainty.ood_score(stats_of(cases[c]["input"], cases[c]["probs"]), ood) for c in held_ids}
    checks = {}
    for kind in tqdm(list(uncertainty.CORRUPTIONS), desc="OOD checks", unit="kind"):
        scores = []
        for k, c in enumerate(held_ids):
            ref_vol = dataset.load_case(c, ras=True)[0]
            bad = io.Volume(uncertainty.corrupt_volume(cases[c]["raw"], kind, seed=k), ref_vol.affine)
            model_input, probs, _ = predict_probabilities(model, bad, spec)
            scores.append(uncertainty.ood_score(stats_of(model_input, probs), ood))
        checks[kind] = {"what": uncertainty.CORRUPTIONS[kind], "flagged": int(sum(s > ood["threshold"] for s in scores)),
                        "cases": len(scores), "median_score": float(np.median(scores))}

    held = calibration_numbers(held_ids, temperature)
    result = {
        "temperature": temperature,
        "fitted_on": fit_ids,
        "evaluated_on": held_ids,
        "split_rule": "validation cases of split.json sorted; fitting half = the first ceil(n/2) not shipped in "
                      "data/hippocampus_sample; held-out half = the rest",
        "region": f"voxels within {RADIUS} voxels (chessboard distance) of the reference or predicted foreground",
        "ece_binning": uncertainty.ECE_BINNING,
        "ece_before": held["ece_before"],
        "ece_after": held["ece_after"],
        "heldout": {**held, "cases": len(held_ids), "mean_dice": float(np.mean(dice)),
                    "uncertainty_dice_spearman": float(rho_t), "uncertainty_dice_spearman_p": float(p_t),
                    "uncertainty_dice_spearman_T1": float(rho_1), "uncertainty_dice_spearman_T1_p": float(p_1),
                    "uncertainty_dice_spearman_T1_all_validation": float(rho_all),
                    "uncertainty_dice_spearman_T1_all_validation_p": float(p_all),
                    "uncertainty": "expected mislabelled voxels per predicted foreground voxel (at the temperature)",
                    "dice": "mean over the foreground classes of each case's Dice"},
        "fit": {**calibration_numbers(fit_ids, temperature), "cases": len(fit_ids)},
        "ood": {**ood, "threshold_rule": ood["rule"],
                "heldout_flagged": int(sum(s > ood["threshold"] for s in held_scores.values())),
                "heldout_scores": held_scores},
        "ood_checks": checks,
        "tta": False,
        "data": os.path.relpath(args.data.resolve(), ROOT),     # e.g. ../shared/data/msd_hippocampus
        "command": f"python scripts/calibrate_reference_model.py {settings.display_path(args.model_dir)}",
    }
    path = uncertainty.write_calibration(args.model_dir, result, overwrite=args.overwrite)
    print(f"{settings.display_path(path)}: T = {temperature:.3f} fitted on {len(fit_ids)} cases "
          f"({time.perf_counter() - start:.0f} s)")
    print(f"held-out ({len(held_ids)} cases, {held['voxels']} voxels near the structure): ECE {held['ece_before']:.4f} "
          f"-> {held['ece_after']:.4f}, NLL {held['nll_before']:.4f} -> {held['nll_after']:.4f} "
          f"({uncertainty.ECE_BINNING})")
    print(f"uncertainty vs Dice (Spearman, held-out): rho = {rho_t:.3f} (p = {p_t:.2g}) at T; "
          f"{rho_1:.3f} (p = {p_1:.2g}) at T = 1; mean Dice {np.mean(dice):.4f}; all {len(all_ids)} validation "
          f"cases at T = 1: rho = {rho_all:.3f} (p = {p_all:.2g})")
    print(f"OOD threshold {ood['threshold']:.2f} ({ood['rule']}); held-out flagged "
          f"{result['ood']['heldout_flagged']}/{len(held_ids)}")
    for kind, row in checks.items():
        print(f"  {kind:8s} flagged {row['flagged']:2d}/{row['cases']} (median score {row['median_score']:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
