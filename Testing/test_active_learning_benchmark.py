"""benchmarks/active_learning.py: each arm trains on the cases it should, and the test pairs the right Dice.

Issue 19's answer ("does suggest beat random?") silently goes wrong if the suggested arm does not train on
the ranking's top cases, if the random arm draws the same cases for every seed or reaches outside the
pool, or if the paired test matches Dice of different (seed, case). No training here: specs and tables.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_benchmark(name: str):
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


al = _load_benchmark("active_learning")


def _entry(name: str) -> dict:
    return {
        "image": f"/data/images/{name}.nii.gz",
        "label": f"/data/labels/{name}.nii.gz",
        "center": [0, 0, 0],
    }


def test_each_arm_trains_on_the_start_labels_plus_its_own_picks_from_the_pool(tmp_path):
    cases = {
        "start": [_entry("s0"), _entry("s1")],
        "pool": [_entry(f"p{i}") for i in range(8)],
        "test": [_entry("t0"), _entry("t1")],
    }
    ranking = [
        {"case": name, "score": 1.0 - i / 10}
        for i, name in enumerate(["p5", "p2", "p7", "p0", "p6", "p1", "p4", "p3"])
    ]
    seeds = [0, 1, 2, 3]
    args = argparse.Namespace(
        out=tmp_path,
        seeds=seeds,
        arms=list(al.ARMS),
        k=2,
        init="m0",
        steps=1,
        batch=1,
        lr=1e-4,
        device="cpu",
        precision="fp32",
        threads=1,
    )

    specs = {(s["arm"], s["seed"]): s for s in al.run_specs(args, cases, ranking)}

    assert sorted(a for a, _ in specs if a == "init") == ["init"]  # no training: evaluated once
    for seed in seeds:
        assert specs[("suggested", seed)]["picks"] == ["p5", "p2"]
        assert specs[("least-doubted", seed)]["picks"] == ["p4", "p3"]
        assert specs[("start-only", seed)]["picks"] == []
        for arm in ("start-only", "random", "suggested", "least-doubted"):
            spec = specs[(arm, seed)]
            trained_on = [al.case_name(e) for e in spec["training"]]
            assert trained_on == ["s0", "s1", *spec["picks"]]
            assert [al.case_name(e) for e in spec["test"]] == ["t0", "t1"]
            assert all(e["label"] for e in spec["training"])  # the picked cases' labels are revealed
    draws = [specs[("random", seed)]["picks"] for seed in seeds]
    assert all(len(set(d)) == 2 and set(d) <= {f"p{i}" for i in range(8)} for d in draws)
    assert len({tuple(d) for d in draws}) > 1  # a different draw per training seed


def _rows(arm: str, dice) -> list[dict]:
    return [
        {"arm": arm, "seed": seed, "case": case, "dice": dice(seed, i)}
        for seed in (0, 1, 2)
        for i, case in enumerate(["c0", "c1", "c2"])
    ]


def test_the_table_averages_seed_means_and_the_test_pairs_dice_of_the_same_seed_and_case():
    from scipy import stats

    suggested = _rows("suggested", lambda seed, i: 0.5 + 0.01 * seed + 0.07 * i * i)
    random = _rows("random", lambda seed, i: 0.4 + 0.05 * seed * seed + 0.02 * i)
    rows = [*suggested, *reversed(random), *_rows("init", lambda seed, i: 0.3)[:3]]

    table, tests = al.summary({"setting": {}, "ranking": [], "rows": rows})

    by_arm = {t["arm"]: t for t in table}
    seed_means = [sum(r["dice"] for r in suggested if r["seed"] == s) / 3 for s in (0, 1, 2)]
    assert by_arm["suggested"]["mean"] == pytest.approx(sum(seed_means) / 3)
    assert by_arm["suggested"]["seed_std"] == pytest.approx(float(np.std(seed_means)))
    assert (by_arm["init"]["seeds"], by_arm["init"]["n"]) == (1, 3)
    (test,) = [t for t in tests if (t["arm"], t["reference"]) == ("suggested", "random")]
    x = [r["dice"] for r in suggested]
    y = [r["dice"] for r in random]  # the same (seed, case) order as x
    assert test["n"] == 9
    assert test["mean_diff_points"] == pytest.approx(100 * (sum(x) - sum(y)) / 9)
    assert test["wilcoxon_p"] == pytest.approx(stats.wilcoxon(x, y).pvalue)
    assert test["ttest_p"] == pytest.approx(stats.ttest_rel(x, y).pvalue)
