"""Seed 004 (voxel-wise adversarial + BYOL): each part against METHODS.md "004", at tiny size."""

from __future__ import annotations

import pytest
import torch

from SemiSupSegLib.methods import get_method
from SemiSupSegLib.methods.base import Batch
from SemiSupSegLib.methods.voxel_adversarial import VoxelDiscriminator, byol_loss, sample_class_voxels
from SemiSupSegLib.networks import NetworkConfig


def test_sampling_draws_each_class_at_most_n_times_and_never_an_excluded_voxel() -> None:
    torch.manual_seed(0)
    classes = torch.randint(-1, 3, (2, 4, 5, 6))  # -1: excluded (an uncertain teacher)
    classes[0, 0, 0, :3] = 2
    features = torch.stack([classes.float() * 1000 + torch.arange(classes.numel()).reshape(classes.shape)], 1)
    drawn, drawn_classes = sample_class_voxels(features, classes, num_classes=3, per_class=7)
    assert drawn.shape == (21, 1) and sorted(drawn_classes.tolist()) == [0] * 7 + [1] * 7 + [2] * 7
    flat_index = (drawn[:, 0] - drawn_classes * 1000).long()
    assert torch.equal(classes.reshape(-1)[flat_index], drawn_classes)  # each row is a voxel of its class
    assert len(set(flat_index.tolist())) == 21  # without replacement
    few = torch.full((1, 2, 2, 2), -1)
    few[0, 0, 0, 0] = 1
    drawn, drawn_classes = sample_class_voxels(torch.zeros(1, 3, 2, 2, 2), few, 2, per_class=5)
    assert drawn.shape == (1, 3) and drawn_classes.tolist() == [1]


def test_a_voxel_reads_the_real_fake_head_of_its_own_class() -> None:
    torch.manual_seed(0)
    disc = VoxelDiscriminator(hidden=8, num_classes=3)
    features, classes = torch.randn(9, 8), torch.tensor([0, 1, 2] * 3)
    before = disc(features, classes)
    with torch.no_grad():
        disc.heads.weight[2] += 1.0
    after = disc(features, classes)
    changed = ~torch.isclose(before, after)
    assert torch.equal(changed, classes == 2)


def test_byol_loss_is_two_minus_two_cosine_and_ignores_length() -> None:
    torch.manual_seed(0)
    p, z = torch.randn(5, 4), torch.randn(5, 4)
    cosine = torch.nn.functional.cosine_similarity(p, z, dim=1)
    assert byol_loss(p, z).item() == pytest.approx((2 - 2 * cosine).mean().item(), abs=1e-6)
    assert byol_loss(p, 3 * p).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(p, -p).item() == pytest.approx(4.0, abs=1e-5)
    z.requires_grad_(True)
    byol_loss(p.requires_grad_(True), z).backward()
    assert z.grad is None  # the teacher's projection is a target


def _method(architecture: str, classes: int, **options):
    torch.manual_seed(0)
    config = NetworkConfig(width=0.0625, dropout=0.0, num_classes=classes, architecture=architecture)
    return get_method("voxel-adversarial")(config, 10, **options)


def _batch(classes: int, size: int) -> Batch:
    torch.manual_seed(1)
    shape = (2, 1, size, 2 * size, size)  # non-cubic
    return Batch(torch.randn(shape), torch.randint(0, classes, shape), torch.randn(shape))


@pytest.mark.parametrize(("architecture", "classes", "size"), [("compact-unet", 2, 8), ("vnet", 3, 16)])
def test_each_stage_trains_only_its_side_and_the_teacher_follows(architecture: str, classes: int, size: int):
    method, batch = _method(architecture, classes, confidence=0.0), _batch(classes, size)
    segmenter, discriminator = method.optimizers()
    seg_losses = method.compute_losses("segmenter", batch, step=5)
    assert all(torch.isfinite(v) for v in seg_losses.values())
    assert seg_losses["fake_voxels"] > 0 and seg_losses["adversarial"] > 0 and seg_losses["feature"] > 0
    seg_losses["loss"].backward()
    assert all(p.grad is None for p in method.discriminator.parameters())  # frozen in the segmenter stage
    assert method.adv_fusion.lateral[0].weight.grad.abs().sum() > 0  # L_adv reaches the fused features
    assert method.predictor[0].weight.grad.abs().sum() > 0  # L_feature reaches the predictor
    assert all(p.grad is None for p in method.teacher.parameters())
    method.zero_grad(set_to_none=True)
    disc_losses = method.compute_losses("discriminator", batch, step=5)
    disc_losses["loss"].backward()
    assert all(p.grad is not None for p in method.discriminator.parameters())
    assert all(p.grad is None for p in segmenter.parameters)  # the features came detached
    assert discriminator.kind == "adam" and discriminator.betas == (0.5, 0.999) and segmenter.kind == "sgd"
    with torch.no_grad():  # as if the optimiser had stepped
        next(method.student.parameters()).add_(1.0)
        next(method.representation.parameters()).add_(1.0)
    method.after_iteration(0)  # decay 0 at t = 0: every teacher part becomes a copy
    for t, s in [(method.teacher, method.student), (method.teacher_representation, method.representation)]:
        assert all(torch.equal(a, b) for a, b in zip(t.parameters(), s.parameters(), strict=True))


def test_unlabelled_voxels_below_the_confidence_are_not_fake_samples() -> None:
    method, batch = _method("compact-unet", 2, confidence=0.999999), _batch(2, 8)
    losses = method.compute_losses("segmenter", batch, step=0)
    assert losses["fake_voxels"] == 0 and losses["adversarial"] == 0
    assert torch.isfinite(losses["loss"])


def test_paper_weights_and_schedule_are_the_defaults() -> None:
    method = _method("vnet", 2)
    assert method.weights == {"alpha": 0.01, "beta": 0.1, "gamma": 0.001}
    assert method.confidence == 0.7 and method.lr == 0.01
    segmenter = method.optimizers()[0]
    assert segmenter.schedule == "step" and segmenter.schedule_options == {"step_size": 4, "gamma": 0.1}
    assert segmenter.momentum == 0.9 and segmenter.weight_decay == 1e-4
    assert method.levels == ["enc1", "enc2", "enc3", "enc4"]


def test_trains_end_to_end_saves_the_student_segments_and_fine_tunes(tiny_phantom, tmp_path):
    from test_seed_methods import _run, _segments

    from SemiSupSegLib.model_store import load_model

    folder, losses = _run(tiny_phantom, tmp_path / "va", method="voxel-adversarial", width=0.0625)
    assert {"segmenter/adversarial", "segmenter/feature", "discriminator/loss"} <= set(losses[-1])
    model = load_model(folder)
    assert list(model.networks) == ["student"]
    _segments(folder, tiny_phantom)
    child, _ = _run(
        tiny_phantom, tmp_path / "child", method="voxel-adversarial", init=str(folder), steps=1, lr=1e-12
    )
    a, b = model.networks["student"].state_dict(), load_model(child).networks["student"].state_dict()
    weights = [k for k in a if a[k].is_floating_point() and "running" not in k]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in weights)
