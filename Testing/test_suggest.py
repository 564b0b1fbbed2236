"""``semisupseg suggest``: unlabelled cases ranked by the model's Monte-Carlo entropy over their region."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SemiSupSegLib import suggest
from SemiSupSegLib.cli import main
from SemiSupSegLib.dataset import Case, load_dataset
from SemiSupSegLib.inference import entropy
from SemiSupSegLib.model_store import load_model, save_model
from SemiSupSegLib.networks import CompactUNet

SHAPE = (9, 11, 14)  # [z, y, x], every axis different


def _case(name: str, center=None) -> Case:
    return Case(name, Path(f"/pool/{name}.nii.gz"), None, center, "unlabeled", 0)


def _doubt_from_probability(foreground: np.ndarray, region: np.ndarray) -> suggest.CaseDoubt:
    """Entropy of a hand-made two-class probability map (the engine's own entropy)."""
    probabilities = torch.from_numpy(np.stack([1 - foreground, foreground])[None]).float()
    return suggest.CaseDoubt(entropy(probabilities)[0].numpy(), region, foreground > 0.5)


def test_higher_entropy_in_the_region_ranks_first_and_outside_it_does_not_count():
    region = np.zeros(SHAPE, bool)
    region[2:7, 3:8, 4:10] = True
    maps = {}
    for name, inside in (("confident", 0.98), ("unsure", 0.5), ("hesitant", 0.8)):
        foreground = np.full(SHAPE, 0.01)
        foreground[region] = inside
        maps[name] = foreground
    maps["confident"][~region] = 0.5  # maximal doubt, but where the model does not look
    cases = [_case(name, (0.0, 0.0, 0.0)) for name in maps]
    seen = []

    ranking = suggest.rank_cases(
        cases, lambda c: _doubt_from_probability(maps[c.name], region), lambda *a: seen.append(a)
    )

    assert [s.case for s in ranking] == ["unsure", "hesitant", "confident"]
    assert ranking[0].score == pytest.approx(np.log(2), abs=1e-4)  # p = 0.5 everywhere in the region
    assert seen == [(1, 3, "confident"), (2, 3, "unsure"), (3, 3, "hesitant")]
    shares = {s.case: s.doubt_share for s in ranking}  # claims nothing, doubts all / claims all, calm
    assert (shares["unsure"], shares["confident"]) == (1.0, 0.0)


def test_two_network_models_are_ranked_by_the_networks_disagreement():
    one, two = (SimpleNamespace(inference_networks=[object()] * n) for n in (1, 2))
    assert suggest.measure_for(one) == "mc-dropout" and suggest.measure_for(two) == "disagreement"
    region = np.ones(SHAPE, bool)
    doubt = _doubt_from_probability(np.full(SHAPE, 0.6), region)
    doubt.measure = "disagreement"
    (ranked,) = suggest.rank_cases([_case("dual")], lambda c: doubt)
    assert ranked.measure == "disagreement" and ranked.uncertain_fraction is None  # no entropy threshold


def test_uncertain_fraction_counts_instrument_voxels_above_the_p08_entropy():
    foreground = np.full(SHAPE, 0.01)
    foreground[4, 5, 2:12] = 0.95  # 10 instrument voxels, 4 of them uncertain
    foreground[4, 5, 2:6] = 0.7
    doubt = _doubt_from_probability(foreground, np.ones(SHAPE, bool))
    assert doubt.label.sum() == 10
    assert suggest.uncertain_fraction(doubt.uncertainty, doubt.label) == pytest.approx(0.4)
    assert "40.0 % of the instrument (4 of 10 voxels)" in suggest.uncertainty_summary(
        doubt.uncertainty, doubt.label
    )
    assert suggest.uncertain_fraction(doubt.uncertainty, np.zeros(SHAPE)) is None


# --------------------------------------------------------------------------- end to end, tiny model


def _oblique_image(seed: int) -> sitk.Image:
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.normal(size=(14, 16, 30)).astype(np.float32))
    image.SetSpacing((0.7, 0.9, 1.2))
    image.SetOrigin((4.0, -3.0, 2.5))
    angle = np.deg2rad(30)
    rotation = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    image.SetDirection(np.asarray(rotation).flatten().tolist())
    return image


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A tiny random model and a pool of two unlabelled oblique, anisotropic cases (one without centre)."""
    root = tmp_path_factory.mktemp("suggest")
    torch.manual_seed(0)
    meta = {
        "name": "tiny",
        "method": "supervised",
        "classes": {"0": "background", "1": "instrument"},
        "patch_size": [16, 16, 16],
        "preprocessing": {"target_spacing": [1.0, 1.0, 1.0]},
    }
    model = save_model(root / "model", {"net": CompactUNet(width=0.0625)}, meta)
    entries = []
    for i in range(2):
        image = _oblique_image(i)
        (root / "images").mkdir(exist_ok=True)
        sitk.WriteImage(image, str(root / "images" / f"u{i}.nii.gz"))
        entry = {"image": f"images/u{i}.nii.gz"}
        if i != 1:
            entry["center"] = list(image.TransformIndexToPhysicalPoint((22, 8, 7)))
        entries.append(entry)
    (root / "dataset.json").write_text(json.dumps({"training": [], "unlabeled": entries}))
    return root, model


def test_doubt_share_flags_a_confident_miss_and_clears_a_confident_hit():
    """Catches the share computed without the region, over the prediction alone (a miss would score 0/0 or
    0), or with the empty case scored 0 (a confident miss would rank as the best case)."""
    shape = (6, 8, 10)
    region = np.zeros(shape, bool)
    region[1:5, 2:7, 3:9] = True
    tube = np.zeros(shape, np.uint8)
    tube[2:4, 3:5, 3:9] = 1  # 24 voxels, all inside the region
    calm = np.zeros(shape, np.float32)
    assert suggest.doubt_share(calm, tube, region) == 0.0  # a confident hit
    assert suggest.doubt_share(calm, np.zeros(shape), region) == 1.0  # a confident miss: nothing at all
    doubt = calm.copy()
    doubt[2:4, 3:5, 3:6] = 0.6  # half the tube doubted
    doubt[0, 0, 0] = doubt[5, 7, 9] = 0.69  # outside the region: does not count
    assert suggest.doubt_share(doubt, tube, region) == pytest.approx(12 / 24)
    assert suggest.doubt_share(doubt, np.zeros(shape), region) == 1.0  # only doubt, nothing claimed


def test_region_is_the_segment_region_around_the_centre_on_an_oblique_volume(pool):
    root, model_dir = pool
    case = load_dataset(root / "dataset.json").unlabeled[0]
    image = sitk.ReadImage(str(case.image))
    region = suggest.region_mask(load_model(model_dir), image, case.center)
    # 2 x 16 mm around the point is about this whole volume (21 x 14 x 17 mm), less its outermost voxels
    assert region.mean() > 0.85
    small = suggest.region_mask(load_model(model_dir), image, case.center, roi_patches=1)
    z, y, x = np.nonzero(small)  # 16 mm along x (0.7 mm voxels) around the point, clamped inside the volume
    assert small[7, 8, 22] and not small.all() and small.shape == (14, 16, 30)
    assert (x.max() - x.min() + 1) * 0.7 == pytest.approx(16, abs=1.0) and x.max() == 29
    assert y.max() - y.min() >= 14 and z.max() - z.min() >= 12 and not (small & ~region).any()


def test_cli_json_ranking_best_first_and_the_protocol_carries_it(pool, capsys):
    root, model = pool
    data = str(root / "dataset.json")
    base = ["suggest", "--model", str(model), "--data", data, "--mc-samples", "1", "--precision", "fp32"]

    assert main([*base, "--json", "--progress", "none"]) == 0
    ranking = json.loads(capsys.readouterr().out)
    assert sorted(r["case"] for r in ranking) == ["u0", "u1"]
    scores = [r["score"] for r in ranking]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] and scores[0] <= np.log(2)
    by_case = {r["case"]: r for r in ranking}
    assert by_case["u1"]["region"] == "whole volume" and by_case["u1"]["center"] is None
    assert by_case["u0"]["region"] == "centre" and Path(by_case["u0"]["image"]).name == "u0.nii.gz"
    assert {r["measure"] for r in ranking} == {"mc-dropout"}  # one network: the MC entropy

    assert main([*base, "--top", "1", "--progress", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["event"] for e in events] == ["started", "progress", "progress", "finished"]
    assert [e["step"] for e in events[1:3]] == [1, 2] and events[0]["total"] == 2
    first = events[-1]["result"]["ranking"]
    assert len(first) == 1 and first[0]["case"] == ranking[0]["case"]
    assert first[0]["score"] == pytest.approx(ranking[0]["score"], abs=1e-6)


def test_a_two_network_model_is_measured_by_inference_disagreement(pool, tmp_path):
    root, model_dir = pool
    twin = load_model(model_dir).networks["net"]
    meta = {**load_model(model_dir).meta, "inference_networks": ["a", "b"]}
    model = load_model(save_model(tmp_path / "twins", {"a": twin, "b": twin}, meta))
    case = load_dataset(root / "dataset.json").unlabeled[0]
    doubt = suggest.measure_case(model, case, mc_samples=2, precision="fp32")
    # identical networks never disagree, where Monte-Carlo dropout would still doubt
    assert doubt.measure == "disagreement" and not doubt.uncertainty.any()


def test_cli_refuses_a_pool_without_unlabelled_cases_in_one_line(pool, tmp_path, capsys):
    _, model = pool
    (tmp_path / "dataset.json").write_text(json.dumps({"training": []}))
    assert main(["suggest", "--model", str(model), "--data", str(tmp_path / "dataset.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no 'unlabeled' cases" in err
    root, _ = pool
    far = {"unlabeled": [{"image": str(root / "images" / "u0.nii.gz"), "center": [500.0, 0.0, 0.0]}]}
    (tmp_path / "dataset.json").write_text(json.dumps(far))
    argv = ["suggest", "--model", str(model), "--data", str(tmp_path / "dataset.json"), "--progress", "none"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "case 'u0'" in err and "outside the volume" in err
