"""Seed 003 (CRLN): each term against METHODS.md "003" on hand-made tensors, stage isolation, end to end."""

from __future__ import annotations

import math

import pytest
import torch

from SemiSupSegLib.methods import crln, get_method
from SemiSupSegLib.methods.base import Batch
from SemiSupSegLib.networks import NetworkConfig


def test_rectification_adds_one_minus_lambda_times_the_relation_map() -> None:
    logits = torch.tensor([[1.0, -1.0], [0.5, 2.0]]).T.reshape(1, 2, 2, 1, 1)  # [B, K, 2 voxels]
    relation = torch.tensor([[0.0, 4.0], [2.0, 0.0]]).T.reshape(1, 2, 2, 1, 1)
    out = crln.rectify(logits, relation, 0.25)
    z = torch.tensor([1.0 + 0.75 * 0.0, -1.0 + 0.75 * 4.0])  # voxel 0: class 0 and class 1
    assert out[0, :, 0, 0, 0] == pytest.approx(torch.softmax(z, 0).tolist(), abs=1e-6)
    assert crln.rectify(logits, relation, 1.0) == pytest.approx(torch.softmax(logits, 1), abs=1e-6)


def test_info_nce_by_hand() -> None:
    anchor, positive = torch.tensor([[1.0, 0.0]]), torch.tensor([0.6, 0.8])
    negatives = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]]])
    tau = 0.5
    terms = [0.6 / tau, 0.0 / tau, -1.0 / tau]
    expected = -terms[0] + math.log(sum(math.exp(t) for t in terms))
    assert crln.info_nce(3 * anchor, 2 * positive, negatives, tau).item() == pytest.approx(expected, abs=1e-5)


def test_anchors_are_uncertain_voxels_of_their_class_and_negatives_valid_voxels_of_others(monkeypatch):
    torch.manual_seed(0)
    classes = torch.randint(-1, 3, (2, 6, 7, 8))
    confidence = torch.rand(2, 6, 7, 8)
    # channel 0 holds the voxel's class, channel 1 the student's confidence, so the samples can be checked
    representation = torch.stack([classes.float(), confidence], dim=1)
    seen = []
    monkeypatch.setattr(crln, "info_nce", lambda a, p, n, tau: seen.append((a, p, n)) or a.sum() * 0)
    _, counts = crln.cps_loss(
        representation, classes, confidence, torch.zeros(3, 2), anchors=5, negatives=7, confidence=0.5
    )
    assert len(seen) == 3 and counts == {"anchors_0": 5, "anchors_1": 5, "anchors_2": 5}
    for c, (anchors, positive, negatives) in enumerate(seen):
        assert torch.all(anchors[:, 0] == c) and torch.all(anchors[:, 1] < 0.5)
        assert negatives.shape == (5, 7, 2)
        assert torch.all(negatives[..., 0] != c) and torch.all(negatives[..., 0] >= 0)
        class_mean = representation.movedim(1, -1)[classes == c].mean(dim=0)
        assert positive == pytest.approx((class_mean / 1.6).tolist(), abs=1e-5)  # prototypes are 0 here


def test_strong_view_mixes_images_and_pseudo_labels_with_the_same_boxes() -> None:
    torch.manual_seed(3)
    b, shape = 3, (8, 8, 8)
    # patch i holds 10^(i+1) everywhere: gain 0.75-1.25 and noise 0.2 keep its source readable in log10
    images = torch.stack([torch.full((1, *shape), 10.0 ** (i + 1)) for i in range(b)])
    probabilities = torch.stack([torch.full((1, *shape), float(i)) for i in range(b)])
    mixed_images, mixed_probabilities = crln.strong_view(images, probabilities)
    assert torch.equal(torch.round(torch.log10(mixed_images)) - 1, mixed_probabilities)
    assert (mixed_probabilities != torch.arange(b).reshape(b, 1, 1, 1, 1)).any()  # something was mixed
    box = crln.cutmix_boxes((20, 30, 40), 200)
    fractions = box.float().flatten(1).mean(dim=1)
    assert 0.35 < fractions.mean().item() < 0.65  # 1 - lam, lam ~ Beta(4, 4): mean 0.5
    assert all(_is_box(m[0]) for m in box[:10])


def _is_box(mask: torch.Tensor) -> bool:
    where = mask.nonzero()
    low, high = where.min(dim=0).values, where.max(dim=0).values
    return int(mask.sum()) == int(torch.prod(high - low + 1))


def _method(architecture: str = "compact-unet", classes: int = 2, **options):
    torch.manual_seed(0)
    config = NetworkConfig(width=0.0625, dropout=0.0, num_classes=classes, architecture=architecture)
    return get_method("crln")(config, 10, **options)


def test_main_stage_trains_the_student_and_lambda_trains_alone() -> None:
    architecture, classes, size = "compact-unet", 3, 8
    method = _method(architecture, classes, prototypes=2)
    with torch.no_grad():
        method.student.dim.up.bias.fill_(1.0)  # M >= 1, so that lambda has a gradient
    shape = (2, 1, size, 2 * size, size)
    batch = Batch(torch.randn(shape), torch.randint(0, classes, shape), torch.randn(shape))
    main, lam = method.optimizers()
    losses = method.compute_losses("main", batch, step=7)
    assert all(torch.isfinite(v) for v in losses.values()) and losses["rectified"] == 1.0
    losses["loss"].backward()
    assert method.lam.grad is None and method.student.dim.prototypes.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.teacher.parameters())
    method.zero_grad(set_to_none=True)
    method.compute_losses("lambda", batch, step=7)["loss"].backward()
    assert method.lam.grad is not None and method.lam.grad.abs() > 0
    assert all(p.grad is None for p in method.student.parameters())
    assert lam.parameters == [method.lam] and main.nesterov and main.schedule == "poly"
    assert method.compute_losses("main", batch, step=0)["rectified"] == 0.0  # before T_r = 5 (10 // 2)


def test_the_relation_map_has_one_full_resolution_channel_per_class_on_both_backbones() -> None:
    for architecture, size in (("compact-unet", 8), ("vnet", 16)):
        method = _method(architecture, 3, prototypes=2)
        with torch.no_grad():
            logits, relation, representation = method.student(torch.randn(1, 1, size, 2 * size, size))
        assert relation.shape == logits.shape == (1, 3, size, 2 * size, size) and relation.min() >= 0
        assert representation.shape[1] == method.student.dim.prototypes.shape[2]  # the prototypes' space


def test_trains_end_to_end_saves_the_backbone_segments_and_fine_tunes(tiny_phantom, tmp_path):
    from test_seed_methods import _run, _segments

    from SemiSupSegLib.model_store import load_model

    options = {"prototypes": 2, "anchors": 8, "negatives": 8}
    folder, losses = _run(
        tiny_phantom, tmp_path / "crln", method="crln", width=0.0625, method_options=options
    )
    assert {"main/cps", "main/unlabeled", "lambda/lambda"} <= set(losses[-1])
    model = load_model(folder)
    assert list(model.networks) == ["net"]
    _segments(folder, tiny_phantom)
    child, _ = _run(
        tiny_phantom, tmp_path / "c", method="crln", init=str(folder), steps=1, lr=1e-12, width=0.0625
    )
    a, b = model.networks["net"].state_dict(), load_model(child).networks["net"].state_dict()
    weights = [k for k in a if a[k].is_floating_point() and "running" not in k]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in weights)


def test_pseudo_labels_are_the_teachers_softmax_before_t_r_and_rectified_after() -> None:
    method = _method("compact-unet", 2, prototypes=2, rectify_from=3)
    with torch.no_grad():
        method.teacher.dim.up.bias.fill_(2.0)  # the teacher's own M, clearly non-zero
        method.lam.fill_(0.3)
    x = torch.randn(2, 1, 8, 16, 8)
    with torch.no_grad():
        logits, relation, _ = method.teacher(x)
    torch.testing.assert_close(method.pseudo_labels(x, step=2), torch.softmax(logits, dim=1))
    torch.testing.assert_close(method.pseudo_labels(x, step=3), crln.rectify(logits, relation, 0.3))
