"""benchmarks/_report.py: a benchmark replaces only its own marked block and never rewrites prose."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "benchmarks/locator.py"


def _load_report():
    spec = importlib.util.spec_from_file_location("_report", REPO / "benchmarks" / "_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _load_report()


def _document(*block_lines: str) -> str:
    """Prose, a block of locator.py, more prose with a heading, another script's block, trailing prose."""
    begin, end = report.markers(SCRIPT, "locator")
    other_begin, other_end = report.markers("benchmarks/ssl_table.py", "ssl_table_phantom")
    return "\n".join(
        [
            "# Benchmarks",
            "",
            "## Locator",
            "Prose before the block, with a stale figure 17.13 that no script may touch.",
            begin,
            *block_lines,
            end,
            "",
            "## Locator prose after the block",
            "Against the targets: not met (hand-written, kept).",
            other_begin,
            "| other | table |",
            other_end,
            "Closing prose without a trailing heading.",
            "",
        ]
    )


def _outside(text: str, block: str = "locator") -> list[str]:
    """The lines before the begin marker and from the end marker on."""
    begin, end = report.markers(SCRIPT, block)
    lines = text.split("\n")
    return lines[: lines.index(begin) + 1] + lines[lines.index(end) :]


def test_write_block_replaces_the_block_and_keeps_every_other_line(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    old = _document("| old | table |", "| 17.13 | 15.22 |", "*old provenance*")
    doc.write_text(old, encoding="utf-8")
    body = ["Machine: test.", "", *report.markdown_table(["a", "b"], [[1, 2], [3, 4]])]

    report.write_block(doc, SCRIPT, "locator", body)

    new = doc.read_text(encoding="utf-8")
    assert _outside(new) == _outside(old)
    begin, end = report.markers(SCRIPT, "locator")
    lines = new.split("\n")
    assert lines[lines.index(begin) + 1 : lines.index(end)] == body
    assert new.endswith("Closing prose without a trailing heading.\n")


def test_rewriting_a_block_twice_is_stable(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(_document("x"), encoding="utf-8")
    report.write_block(doc, SCRIPT, "locator", ["y", "z"])
    once = doc.read_text(encoding="utf-8")
    report.write_block(doc, SCRIPT, "locator", ["y", "z"])
    assert doc.read_text(encoding="utf-8") == once


@pytest.mark.parametrize(
    "text",
    [
        "# Benchmarks\n\n## Locator\nprose only, no markers\n",
        "\n".join(["prose", *report.markers(SCRIPT, "other-block"), "more prose", ""]),
        "\n".join(["prose", report.markers(SCRIPT, "locator")[0], "no end marker", ""]),
        _document("first copy") + "\n".join(report.markers(SCRIPT, "locator")) + "\n",
        "\n".join(["prose", *reversed(report.markers(SCRIPT, "locator")), ""]),
    ],
    ids=["missing", "other-block-only", "end-missing", "duplicated", "end-before-begin"],
)
def test_write_block_refuses_and_leaves_the_file_untouched(tmp_path, text):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(text, encoding="utf-8")
    before = doc.read_bytes()

    with pytest.raises(report.MarkerError, match=r"\[locator\]"):
        report.write_block(doc, SCRIPT, "locator", ["new table"])

    assert doc.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BENCHMARKS.md"]  # no temporary file left


def _load_benchmark(name: str):
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_new_scanner_paired_test_pairs_seed_by_case_and_broadcasts_a_one_seed_row():
    """ssl_domain_shift decides "SSL beats supervised": the pairs and the p-values must be the right ones."""
    shift = _load_benchmark("ssl_domain_shift")
    rows = [{"row": "B2 source-only", "method": "none", "seed": 0, "case": c, "dice": 0.5} for c in "abcd"]
    for seed in (0, 1):
        rows += [
            {
                "row": "B2 dual-unet",
                "method": "dual-unet",
                "seed": seed,
                "case": c,
                "dice": 0.5 + 0.1 * (i + 1),
            }
            for i, c in enumerate("abcd")
        ]
        rows += [
            {"row": "B2 supervised-B", "method": "supervised", "seed": seed, "case": c, "dice": 0.4}
            for c in "abcd"
        ]
    table, tests = shift.summary({"setting": {}, "rows": rows})
    means = {t["row"]: t["mean"] for t in table}
    assert means["B2 dual-unet"] == pytest.approx(0.75) and means["B2 source-only"] == pytest.approx(0.5)
    (test,) = tests
    assert (test["ssl"], test["supervised"], test["n"]) == ("B2 dual-unet", "B2 source-only", 8)
    assert test["mean_diff_points"] == pytest.approx(25.0)
    from scipy import stats

    x = [0.5 + 0.1 * (i + 1) for i in range(4)] * 2
    assert test["wilcoxon_p"] == pytest.approx(stats.wilcoxon(x, [0.5] * 8).pvalue)
    assert test["ttest_p"] == pytest.approx(stats.ttest_rel(x, [0.5] * 8).pvalue)


def test_the_recognition_probe_picks_the_largest_heaviest_and_most_elongated_component():
    """locator_recognition's three ways of picking the recognised component (a thin faint tube, a big
    confident blob and a small very confident blob) on a non-cubic grid."""
    probe = _load_benchmark("locator_recognition")
    likelihood = np.zeros((40, 44, 48), np.float32)
    likelihood[20, 8, 4:40] = 0.6  # the tube: 36 voxels along x, faint
    likelihood[8:13, 28:33, 8:13] = 0.9  # the largest: 125 voxels
    likelihood[30:33, 30:33, 30:33] = 1.0  # 27 voxels
    picks = probe._component_middles(likelihood)
    np.testing.assert_allclose(picks["largest"], (10, 30, 10), atol=1.0)
    np.testing.assert_allclose(picks["heaviest"], (10, 30, 10), atol=1.0)  # 112.5 over 21.6 and 27
    np.testing.assert_allclose(picks["longest"], (20, 8, 21.5), atol=1.5)  # elongation 36/0.5 vs 1
    assert probe._component_middles(np.zeros((8, 9, 10), np.float32)) == dict.fromkeys(probe.PICKS)


def test_the_recognition_probe_centre_target_is_a_ball_whose_heaviest_centroid_is_the_centre():
    probe = _load_benchmark("locator_recognition")
    ball = probe._ball((20, 24, 28), (5.0, 12.0, 20.5), 3.0)
    assert ball[5, 12, 20] and ball[7, 12, 21] and not ball[8, 12, 20] and not ball[5, 16, 20]
    likelihood = 0.9 * ball.astype(np.float32)
    likelihood[15:17, 2:4, 2:4] = 1.0  # a lighter component (8 voxels)
    np.testing.assert_allclose(probe._heaviest_centroid(likelihood), (5.0, 12.0, 20.5), atol=0.01)
    assert probe._heaviest_centroid(np.zeros((4, 5, 6), np.float32)) is None
