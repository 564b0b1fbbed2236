"""Seed methods II: embedding matching (seed 001) and CoraNet (seed 002), METHODS.md "001" and "002".

Each term on hand-made tensors whose value is known (the surface bands, the sampled class embeddings, the
similarity pseudo-labels, the XOR masks, the class-weighted CE); each method's total against the documented
weighted sum recomputed from its own forward passes (as ``test_loss_composition.py`` does for the other
methods), with the teacher made to differ from the student so that a target from the wrong network shows;
and each method end to end through the Trainer at tiny size (16^3 patches, width 0.125).
"""

from __future__ import annotations

import io
import json
import math

import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from test_loss_composition import make_batch, perturb  # the same small batch and teacher noise

from SemiSupSegLib.cli import build_parser
from SemiSupSegLib.cli.train import _train_fields
from SemiSupSegLib.dataset import load_dataset
from SemiSupSegLib.errors import InputError
from SemiSupSegLib.inference import entropy, segment
from SemiSupSegLib.methods import METHODS
from SemiSupSegLib.methods import embedding_matching as em_module
from SemiSupSegLib.methods.coranet import class_weights, xor_masks
from SemiSupSegLib.methods.embedding_matching import (
    class_similarity_maps,
    sample_class_embeddings,
    surface_bands,
)
from SemiSupSegLib.model_store import load_model
from SemiSupSegLib.networks import NetworkConfig
from SemiSupSegLib.progress import JsonLinesReporter
from SemiSupSegLib.training import TrainConfig, Trainer

CONFIG = NetworkConfig(width=0.0625, dropout=0.0)  # no dropout: a forward pass is deterministic
PATCH = (16, 20, 24)  # z, y, x all different
STEP, TOTAL_STEPS = 20, 40  # ramp(20, 40) = 0.2865
VALUE_TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny networks: a second intra-op thread only adds synchronisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- independent references


def documented_ramp(t: float, length: float) -> float:
    """METHODS.md: ramp(t, T) = exp(-5 (1 - clip(t, 0, T)/T)^2)."""
    return math.exp(-5.0 * (1.0 - min(max(t, 0.0), length) / length) ** 2)


def voxel_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-log softmax(logits)[target] per voxel, ``[B, ...]``."""
    return -torch.log_softmax(logits.float(), dim=1).gather(1, target.unsqueeze(1))[:, 0]


def ce_dice(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """0.5 (CE + Dice) of two classes over ``mask``.

    Dice = 1 - (2 sum(s y) + 1e-5) / (sum s^2 + sum y^2 + 1e-5), ``s`` the foreground softmax.
    """
    m = torch.ones(target.shape) if mask is None else mask.float()
    ce = (m * voxel_ce(logits, target)).sum() / m.sum()
    s, y = torch.softmax(logits.float(), dim=1)[:, 1], (target == 1).float()
    dice = 1.0 - (2.0 * (m * s * y).sum() + 1e-5) / ((m * s * s).sum() + (m * y).sum() + 1e-5)
    return 0.5 * ce + 0.5 * dice


def weighted_ce(logits, target, weights, mask=None) -> torch.Tensor:
    """sum(m w_y CE) / sum(m w_y)."""
    w = torch.tensor(weights)[target] * (1.0 if mask is None else mask.float())
    return (w * voxel_ce(logits, target)).sum() / w.sum()


def flat_grad(loss: torch.Tensor, params: list) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    filled = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]
    return torch.cat([g.flatten() for g in filled])


def _nonzero_grad(loss: torch.Tensor, params: list) -> bool:
    return loss.requires_grad and flat_grad(loss, params).abs().max() > 0


def assert_same_gradient(total: torch.Tensor, reference: torch.Tensor, params: list) -> None:
    got, expected = flat_grad(total, params), flat_grad(reference, params)
    assert expected.abs().max() > 0
    assert (got - expected).abs().max() / expected.abs().max() < 1e-4


# --------------------------------------------------------------------------- 001: terms by hand


def test_surface_bands_are_the_voxels_of_each_class_within_the_band_of_the_other():
    """Catches a band measured on the wrong class, the wrong width, or along the wrong axis."""
    label = torch.zeros(1, 1, 3, 4, 9, dtype=torch.long)
    label[..., 3:6] = 1  # an object slab across x = 3, 4, 5 (z, y, x differ in size)
    one = surface_bands(label, 2, width=1)[0]
    assert one.shape == (2, 3, 4, 9)
    assert (one[1] == torch.isin(torch.arange(9), torch.tensor([3, 5]))).all()  # just inside the surface
    assert (one[0] == torch.isin(torch.arange(9), torch.tensor([2, 6]))).all()  # just outside
    two = surface_bands(label, 2, width=2)[0]
    assert (two[1] == torch.isin(torch.arange(9), torch.tensor([3, 4, 5]))).all()
    assert (two[0] == torch.isin(torch.arange(9), torch.tensor([1, 2, 6, 7]))).all()


def test_sampled_class_embeddings_average_the_normalised_band_embeddings_over_both_patches():
    """Catches unnormalised embeddings, per-patch instead of pooled means, and ignoring N."""
    bands = torch.zeros(2, 2, 1, 1, 4, dtype=torch.bool)
    bands[0, 1, ..., :2] = True  # class 1: two voxels in patch 0, one in patch 1
    bands[1, 1, ..., 3] = True
    emb = torch.zeros(2, 3, 1, 1, 4)
    emb[0, 0, ..., 0], emb[0, 1, ..., 1], emb[1, 2, ..., 3] = (
        5.0,
        0.5,
        2.0,
    )  # unit e0, e1, e2 at norms 5, .5, 2
    means, found = sample_class_embeddings(emb, bands, samples=10)
    assert found.tolist() == [False, True]
    assert torch.allclose(means[1], torch.tensor([1.0, 1.0, 1.0]) / 3) and means[0].abs().sum() == 0
    torch.manual_seed(0)
    means, _ = sample_class_embeddings(emb, bands, samples=1)  # one voxel of patch 0, the one of patch 1
    assert sorted(means[1].tolist()) == pytest.approx([0.0, 0.5, 0.5])


def test_similarity_maps_are_the_mean_cosine_to_the_sampled_embeddings_and_label_by_the_larger():
    """Catches a missing normalisation of the student embeddings and a swapped pseudo-label order."""
    g = torch.Generator().manual_seed(0)
    student = (torch.randn(2, 5, 3, 4, 6, generator=g) * 3).requires_grad_()
    e_bg, e_obj = torch.randn(7, 5, generator=g), torch.randn(9, 5, generator=g)
    means = torch.stack([F.normalize(e, dim=1).mean(dim=0) for e in (e_bg, e_obj)])
    maps = class_similarity_maps(student, means)
    flat = student.movedim(1, -1).reshape(-1, 1, 5)
    for c, e in enumerate((e_bg, e_obj)):  # voxels x N pairwise cosines, then the mean
        pairwise = F.cosine_similarity(flat, e.unsqueeze(0), dim=-1).mean(dim=1)
        assert torch.allclose(maps[:, c].reshape(-1), pairwise, atol=1e-6)
    assert torch.equal(maps.argmax(dim=1), (maps[:, 1] > maps[:, 0]).long())  # [S_obj > S_bg]
    maps.sum().backward()
    assert student.grad.abs().sum() > 0


def em_method(**options):
    """Embedding matching whose teacher differs from its student."""
    torch.manual_seed(0)
    method = METHODS["embedding-matching"](CONFIG, TOTAL_STEPS, samples=10_000, **options).train()
    perturb(method.teacher, seed=1)
    return method


def test_embedding_matching_total_is_sup_ua_and_ramped_nn_and_entropy(monkeypatch):
    """Catches a wrong weight or ramp, labelled embeddings from the student, masks swapped between L_ua and
    L_nn, L_ent without gradient through the student embeddings, and the Monte-Carlo passes run on the
    student."""
    method, batch = em_method(), make_batch()
    size = batch.unlabeled_image.shape
    p_teacher = torch.softmax(torch.randn(size[0], 2, *size[2:]), dim=1)
    uncertainty = torch.where(torch.arange(size[-1]) < 10, 0.3, 0.68).expand(size[0], *size[2:])
    calls = []

    def fake_mc(net, x, samples, precision="fp32", batchnorm="batch"):
        calls.append(net)
        return p_teacher, uncertainty

    monkeypatch.setattr(em_module, "mc_prediction", fake_mc)
    seen = []
    monkeypatch.setattr(em_module, "entropy", lambda p: seen.append(p) or entropy(p))
    torch.manual_seed(7)
    losses = method.compute_losses("student", batch, STEP)
    assert calls == [method.teacher]
    # the reference: noise drawn in the method's order (student input, then the teacher's labelled input)
    torch.manual_seed(7)
    x = torch.cat([batch.labeled_image, batch.unlabeled_image])
    logits, feats = method.student.forward_features(x + 0.02 * torch.randn(x.shape))
    teacher_in = batch.labeled_image + 0.01 * torch.randn(batch.labeled_image.shape)
    with torch.no_grad():
        t_emb = method.teacher.forward_features(teacher_in)[1]["dec1"]
    bands = surface_bands(batch.labeled_label, 2, 3)
    means = torch.stack(
        [F.normalize(t_emb, dim=1).movedim(1, -1)[bands[:, c]].mean(dim=0) for c in range(2)]
    )  # every band voxel is drawn (samples 10000): the repeats agree
    unit = F.normalize(feats["dec1"][2:], dim=1)
    sim = torch.einsum("bd...,kd->bk...", unit, means)
    certain = uncertainty < (0.75 + 0.25 * documented_ramp(STEP, TOTAL_STEPS)) * math.log(2)
    assert 0 < certain.sum() < certain.numel()
    ce = lambda target, m: (m * voxel_ce(logits[2:], target)).sum() / m.sum()  # noqa: E731
    ua = ce(p_teacher.argmax(dim=1), certain.float())
    nn_loss = ce(sim.detach().argmax(dim=1), (~certain).float())
    q = torch.softmax(sim, dim=1)
    ent = -(q * torch.log(q + 1e-6)).sum(dim=1).mean()
    w = documented_ramp(STEP, TOTAL_STEPS)
    reference = ce_dice(logits[:2], batch.labeled_label[:, 0]) + ua + 0.25 * w * nn_loss + 0.125 * w * ent
    for name, value in {"ua": ua, "nn": nn_loss, "entropy": ent}.items():
        assert losses[name].item() == pytest.approx(value.item(), abs=VALUE_TOL), name
    assert losses["loss"].item() == pytest.approx(reference.item(), abs=VALUE_TOL)
    params = list(method.student.parameters())
    assert_same_gradient(losses["loss"], reference, params)
    # L_ent's gradient is below float noise of the total here (S is near uniform at initialisation): its
    # input, softmax(S), must still reach the student
    (entropy_input,) = seen
    assert _nonzero_grad(entropy_input.sum(), params)


def test_embedding_matching_teacher_gets_no_gradient_and_tracks_the_student_by_ema():
    """Catches a teacher forward that keeps a graph into a trainable teacher, and a wrong EMA decay."""
    method = em_method(mc_samples=2)
    losses = method.compute_losses("student", make_batch(), STEP)
    losses["loss"].backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.student.parameters())
    before = [p.clone() for p in method.teacher.parameters()]
    method.after_iteration(1)  # decay 0.5
    for old, new, s in zip(before, method.teacher.parameters(), method.student.parameters(), strict=True):
        assert torch.allclose(new, 0.5 * old + 0.5 * s)


# --------------------------------------------------------------------------- 002: terms by hand


def test_coranet_class_weights_and_weighted_cross_entropy_by_hand():
    """Catches swapped conservative / radical weights and a weighted CE divided by the voxel count."""
    assert class_weights(5.0, 2) == ((5.0, 1.0), (1.0, 5.0))
    assert class_weights(5.0, 3) == ((5.0, 1.0, 1.0), (1.0, 5.0, 5.0))
    method = METHODS["coranet"](CONFIG, TOTAL_STEPS)
    logits = torch.tensor([[0.0, 0.0, math.log(3.0)], [0.0, math.log(3.0), 0.0]]).reshape(1, 2, 3)
    target = torch.tensor([[0, 1, 1]])  # CE: ln 2, ln(4/3), ln 4
    ce = [math.log(2), math.log(4 / 3), math.log(4)]
    zero = torch.zeros(1, 2, 3)  # D and the other head at equal logits: CE ln 2 everywhere
    dice = 1.0 - (2 * 0.5 * 2 + 1e-5) / (3 * 0.25 + 2 + 1e-5)
    d_loss = 0.5 * math.log(2) + 0.5 * dice
    con = method.crm_loss((zero, logits, zero), target) - d_loss - math.log(2)
    assert con.item() == pytest.approx((5 * ce[0] + ce[1] + ce[2]) / 7, abs=1e-6)
    rad = method.crm_loss((zero, zero, logits), target) - d_loss - math.log(2)
    assert rad.item() == pytest.approx((ce[0] + 5 * ce[1] + 5 * ce[2]) / 11, abs=1e-6)


def test_xor_masks_mark_voxels_where_the_conservative_and_radical_heads_disagree():
    """Catches AND/OR for XOR, a strict threshold, and the foreground taken as channel 1 of K classes."""
    fg = lambda *p: torch.log(torch.tensor([[1 - v for v in p], list(p)])).unsqueeze(0)  # noqa: E731
    con, rad = fg(0.2, 0.7, 0.2, 0.7, 0.5), fg(0.2, 0.2, 0.7, 0.7, 0.4)
    main = fg(0.9, 0.1, 0.6, 0.4, 0.5)
    pseudo, certain = xor_masks(main, con, rad)
    assert certain.tolist() == [[True, False, False, True, False]]  # 0.5 counts as foreground
    assert pseudo.tolist() == [[1, 0, 1, 0, 0]]
    # three classes: foreground is 1 - p_background (0.3 + 0.3 here), not the probability of class 1
    three = torch.log(torch.tensor([[0.4], [0.3], [0.3]])).unsqueeze(0)
    low = torch.log(torch.tensor([[0.8], [0.1], [0.1]])).unsqueeze(0)
    assert xor_masks(three, three, low)[1].tolist() == [[False]]


def cora_method(**options):
    torch.manual_seed(0)
    method = METHODS["coranet"](CONFIG, TOTAL_STEPS, pretrain_steps=10, **options).train()
    perturb(method.teacher, seed=1)
    return method


def test_coranet_pretraining_is_the_supervised_loss_on_labelled_patches_only():
    """Catches unlabelled terms (or the teacher) used before ``pretrain_steps``."""
    method, batch = cora_method(), make_batch()
    method.teacher.register_forward_pre_hook(lambda *a: pytest.fail("the teacher ran in pretraining"))
    losses = method.compute_losses("student", batch, 9)
    logits = method.student(batch.labeled_image)
    reference = method.crm_loss(logits, batch.labeled_label)
    assert set(losses) == {"loss", "sup"} and losses["loss"].item() == pytest.approx(reference.item())


def test_coranet_total_is_sup_plus_half_of_certain_self_training_and_ramped_uncertain_consistency():
    """Catches certain/uncertain swapped, the consistency target from the student, the auxiliary weights
    swapped in C-SN, and a wrong weight or ramp offset."""
    method, batch = cora_method(), make_batch()
    step = 13  # 3 steps into self-training, 6 of ramp: ramp(3, 6) = 0.2865
    torch.manual_seed(7)
    losses = method.compute_losses("student", batch, step)
    main, con, rad = method.student(torch.cat([batch.labeled_image, batch.unlabeled_image]))
    (pc, pr) = (1 - torch.softmax(t[2:], dim=1)[:, 0] for t in (con, rad))
    certain = ~((pc >= 0.5) ^ (pr >= 0.5))
    assert 0 < certain.sum() < certain.numel()
    pseudo = main[2:].detach().argmax(dim=1)
    conservative, radical = (5.0, 1.0), (1.0, 5.0)
    sup = ce_dice(main[:2], batch.labeled_label[:, 0])
    sup = sup + weighted_ce(con[:2], batch.labeled_label[:, 0], conservative)
    sup = sup + weighted_ce(rad[:2], batch.labeled_label[:, 0], radical)
    c_sn = ce_dice(main[2:], pseudo, certain) + weighted_ce(con[2:], pseudo, conservative, certain)
    c_sn = c_sn + weighted_ce(rad[2:], pseudo, radical, certain)
    torch.manual_seed(7)
    noise = (0.1 * torch.randn(batch.unlabeled_image.shape)).clamp(-0.2, 0.2)
    with torch.no_grad():
        p_t = torch.softmax(method.teacher(batch.unlabeled_image + noise), dim=1)
    uncertain = (~certain).float()
    uc_sn = (uncertain * ((torch.softmax(main[2:], dim=1) - p_t) ** 2).sum(dim=1)).sum() / uncertain.sum()
    ramp_steps = round((TOTAL_STEPS - 10) * 40 / 200)  # the paper's 40 of 200 self-training epochs
    w = 0.1 * documented_ramp(step - 10, ramp_steps)
    reference = sup + 0.5 * (c_sn + w * uc_sn)
    for name, value in {"sup": sup, "c_sn": c_sn, "uc_sn": uc_sn}.items():
        assert losses[name].item() == pytest.approx(value.item(), abs=VALUE_TOL), name
    assert losses["loss"].item() == pytest.approx(reference.item(), abs=VALUE_TOL)
    assert_same_gradient(losses["loss"], reference, list(method.student.parameters()))
    losses["loss"].backward()
    assert all(p.grad is None for p in method.teacher.parameters())


def test_coranet_masks_come_from_a_copy_refreshed_every_mask_refresh_steps():
    """Catches masks from the live student when a refresh period is set, or a copy never refreshed."""
    method, batch = cora_method(mask_refresh_steps=2), make_batch()
    snapshot = lambda: [p.clone() for p in method.mask_source.parameters()]  # noqa: E731
    live = lambda: list(method.student.parameters())  # noqa: E731
    method.compute_losses("student", batch, 10)  # first self-training step: the copy is taken
    assert all(torch.equal(a, b) for a, b in zip(snapshot(), live(), strict=True))
    perturb(method.student, seed=3)
    losses = method.compute_losses("student", batch, 11)  # within the period: the old copy
    assert not any(torch.equal(a, b) for a, b in zip(snapshot(), live(), strict=True))
    with torch.no_grad():  # the copy sees the unlabelled half alone (train-mode BatchNorm over it)
        _, certain = xor_masks(*method.mask_source(batch.unlabeled_image))
    assert losses["uncertain_fraction"].item() == pytest.approx((~certain).float().mean().item())
    method.compute_losses("student", batch, 12)  # refreshed
    assert all(torch.equal(a, b) for a, b in zip(snapshot(), live(), strict=True))


def test_unknown_options_are_refused_and_paper_defaults_hold():
    """Catches a method that swallows a typo, and changed paper defaults."""
    for name in ("embedding-matching", "coranet"):
        with pytest.raises(InputError, match="no option"):
            METHODS[name](CONFIG, 10, alpah=5)
        with pytest.raises(InputError, match="no option"):
            METHODS[name].parse_options({"bogus": 1})
    em = METHODS["embedding-matching"](CONFIG, 100)
    assert (em.samples, em.repeats, em.band, em.mc[0], em.ramp_steps) == (256, 4, 3, 8, 100)
    assert METHODS["embedding-matching"].default_dropout == 0.15
    cora = METHODS["coranet"](CONFIG, 230)
    assert (cora.alpha, cora.lr, cora.pretrain_steps, cora.ramp_steps) == (5.0, 1e-3, 30, 40)
    assert cora.optimizers()[0].betas == (0.5, 0.999)


# --------------------------------------------------------------------------- end to end


def _run(data, out, **kw) -> tuple:
    base = dict(
        data=str(data),
        out=str(out),
        steps=2,
        batch=2,
        patch_size=(16, 16, 16),
        width=0.125,
        val_cases=0,
        val_every=1000,
        checkpoint_every=1000,
        translation=6,
        lr=1e-3,
    )
    stream = io.StringIO()
    folder = Trainer(TrainConfig(**{**base, **kw}), JsonLinesReporter(stream)).run()
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    return folder, [e["losses"] for e in events if e["event"] == "progress"]


def _segments(folder, data) -> None:
    case = load_dataset(data).training[0]
    result = segment(load_model(folder), sitk.ReadImage(str(case.image)), case.center)
    labels = set(sitk.GetArrayViewFromImage(result.label).ravel().tolist())
    assert labels <= {0, 1}


def test_coranet_on_the_vnet_saves_the_main_head_only_segments_and_fine_tunes(tiny_phantom, tmp_path):
    folder, losses = _run(
        tiny_phantom,
        tmp_path / "cora",
        method="coranet",
        network="vnet",
        method_options={"pretrain_steps": 1},
    )
    assert set(losses[0]) == {"loss", "sup"} and {"c_sn", "uc_sn"} <= set(losses[1])
    model = load_model(folder)
    config = model.meta["networks"]["net"]
    assert list(model.networks) == ["net"] and model.meta["training"]["config"]["network"] == "vnet"
    assert (config["architecture"], config["head_block"], config["dropout"]) == ("vnet", True, 0.5)
    _segments(folder, tiny_phantom)
    clash = dict(data=str(tiny_phantom), out=str(tmp_path / "x"), init=str(folder), network="compact-unet")
    clash.update(steps=0, patch_size=(16, 16, 16), val_cases=0)  # a missed refusal must not train long
    with pytest.raises(InputError, match="--network compact-unet differs from the vnet network"):
        Trainer(TrainConfig(**clash)).run()
    clash.update(network=None, patch_size=(16, 16, 20))
    with pytest.raises(InputError, match="divisible by 16"):  # the --init model's VNet sets the rule
        Trainer(TrainConfig(**clash)).run()
    # no --network: the VNet of the --init model (its patch check, 16), loaded into backbone and teacher
    child, _ = _run(tiny_phantom, tmp_path / "child", method="coranet", init=str(folder), steps=1, lr=1e-12)
    a, b = model.networks["net"].state_dict(), load_model(child).networks["net"].state_dict()
    weights = [k for k in a if a[k].is_floating_point() and "running" not in k]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in weights)


def test_embedding_matching_trains_end_to_end_and_saves_its_teacher_with_the_papers_dropout(
    tiny_phantom, tmp_path
):
    options = {"mc_samples": 2}
    folder, losses = _run(tiny_phantom, tmp_path / "em", method="embedding-matching", method_options=options)
    assert len(losses) == 2 and {"ua", "nn", "entropy"} <= set(losses[-1])
    assert all(math.isfinite(v) for v in losses[-1].values())
    model = load_model(folder)
    assert list(model.networks) == ["teacher"] and model.meta["networks"]["teacher"]["dropout"] == 0.15


def test_network_option_reaches_the_config_and_the_vnet_needs_patches_of_16(tmp_path):
    """Catches --network not passed on, and the VNet allowed patches its four poolings cannot halve."""
    args = build_parser().parse_args(["train", "--data", "d.json", "--network", "vnet"])
    assert _train_fields(args)["network"] == "vnet"
    config = TrainConfig(data="d.json", out=str(tmp_path / "m"), network="vnet", patch_size=(16, 16, 24))
    with pytest.raises(InputError, match="divisible by 16"):
        Trainer(config).run()
