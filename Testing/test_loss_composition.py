"""How each method's loss terms combine into the back-propagated total, and where its targets come from.

``test_methods_ssl.py`` pins the term functions by hand-computed values; these tests pin the wiring. For
every method, on a tiny non-cubic batch (2 labelled + 2 unlabelled patches of 16 x 20 x 24) at a step where
the ramps are neither 0 nor 1, ``losses["loss"]`` must equal the documented weighted sum of terms that the
test recomputes from its own forward passes, with weights recomputed from METHODS.md's constants (0.1,
0.002, the ramp exp(-5 (1 - t/T)^2)), and its gradient with respect to the trained networks must equal the
gradient of that sum. Targets must come from the teacher (mean teacher: the teacher's softmax on the noised
input; UA-MT: also the teacher's Monte-Carlo uncertainty); the teacher is made to differ from the student,
so a target taken from the wrong network changes the total.

The networks have no dropout so that a forward pass is deterministic; the Monte-Carlo passes are replaced
by fakes that return fixed maps per network (the passes themselves are tested in ``test_methods_ssl.py``
and ``test_ssl_fidelity.py``), and the mean teacher's input noise is redrawn from the same global seed.

The Dual-UNet is checked in its default, seed 000's form (issue 13): L_sup = CE + Dice at 1:1 (eq. 2),
voxel distances of the one foreground probability (eqs. 3, 5, 9), L_NCont the squared L2 between the
contextual encoder's codes (eq. 7), computed with the encoder in eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from SemiSupSegLib.losses import binary_entropy
from SemiSupSegLib.methods import METHODS, Batch, ua_mt
from SemiSupSegLib.methods import dual_unet as dual_unet_module
from SemiSupSegLib.methods.dual_unet import DualUNet
from SemiSupSegLib.networks import NetworkConfig

CONFIG = NetworkConfig(width=0.0625, dropout=0.0)
PATCH = (16, 20, 24)  # z, y, x: every axis different, each a multiple of 4 and >= 16 (classifier trunk)
STEP = 20
TOTAL_STEPS = 40  # mean teacher and UA-MT ramp over the whole run: ramp(20, 40) = 0.2865
DU_TOTAL_STEPS = 100
DU_RAMP_STEPS = 4000 * DU_TOTAL_STEPS // 10000  # the paper's 4k of 10k steps, scaled: ramp(20, 40) = 0.2865
SUP_WEIGHTS = (0.5, 0.5)  # (CE, Dice): METHODS.md's default supervised loss 0.5 (CE + Dice)
# The Dual-UNet's L_sup: METHODS.md "000", eq. 2, BCE + Dice at 1:1 (two-class softmax CE = sigmoid BCE).
DUAL_UNET_SUP_WEIGHTS = (1.0, 1.0)
VALUE_TOL = 1e-5  # |loss - reference| is 2.4e-6 here (float32 sums)
LOW_U, HIGH_U = 0.3, 0.68  # fake Monte-Carlo entropies: below / above every ramped threshold at STEP


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


def ce_dice(logits: torch.Tensor, label: torch.Tensor, weights: tuple[float, float]) -> torch.Tensor:
    """w_ce CE + w_dice (1 - (2 sum(s y) + 1e-5) / (sum(s^2) + sum(y^2) + 1e-5)), s the foreground softmax.

    CE is the voxel mean; the Dice sums over the whole batch (METHODS.md, "Notation").
    """
    log_p = torch.log_softmax(logits.float(), dim=1)
    ce = -log_p.gather(1, label).mean()
    s, y = log_p.exp()[:, 1], (label[:, 0] == 1).float()
    dice = 1.0 - (2.0 * (s * y).sum() + 1e-5) / ((s * s).sum() + (y * y).sum() + 1e-5)
    return weights[0] * ce + weights[1] * dice


def bce(logits: torch.Tensor, target: int) -> torch.Tensor:
    """Mean binary cross-entropy of ``logits`` against the constant target 1 or 0."""
    return F.softplus(-logits).mean() if target == 1 else F.softplus(logits).mean()


def masked_average(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(mask values) / sum(mask); the mask must be partial, or the term could not tell bugs apart."""
    assert 0 < mask.sum() < mask.numel(), "the test needs a partial mask"
    return (mask * values).sum() / mask.sum()


def flat_grad(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    """d loss / d params, flattened into one vector (zeros where a parameter gets no gradient)."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    filled = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]
    return torch.cat([g.flatten() for g in filled])


def assert_same_gradient(total: torch.Tensor, reference: torch.Tensor, params: list) -> None:
    got, expected = flat_grad(total, params), flat_grad(reference, params)
    assert expected.abs().max() > 0
    error = (got - expected).abs().max() / expected.abs().max()
    assert error < 1e-4, f"gradient of the total differs from the documented sum's by {error:.2e} (relative)"


def make_batch(seed: int = 0) -> Batch:
    """2 labelled patches (a box of foreground each, brighter) + 2 unlabelled, ``[2, 1, 16, 20, 24]``."""
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(2, 1, *PATCH, dtype=torch.long)
    label[0, 0, 3:10, 5:12, 4:16] = 1
    label[1, 0, 8:14, 2:9, 12:21] = 1
    image = torch.randn(2, 1, *PATCH, generator=g) + 1.5 * label.float()
    return Batch(image, label, torch.randn(2, 1, *PATCH, generator=g))


def perturb(net: torch.nn.Module, seed: int, scale: float = 0.2) -> None:
    """Add noise to every parameter, so that ``net`` (the teacher) no longer equals its student."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def halves(shape: tuple[int, ...], axis: int) -> torch.Tensor:
    """Boolean map ``shape`` that is True on the first half along ``axis`` (a partial, asymmetric mask)."""
    index = torch.arange(shape[axis]) < shape[axis] // 2
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return index.reshape(view).expand(shape)


def fake_mc(maps: dict[int, tuple[torch.Tensor, torch.Tensor]], calls: list) -> Callable:
    """A stand-in for ``mc_prediction``: fixed (P^, U^) per network (by identity); logs every call."""

    def mc_prediction(net, x, samples, precision="fp32", batchnorm="batch"):
        calls.append((id(net), x, samples))
        return maps[id(net)]  # KeyError: the passes ran on a network that should not produce a target

    return mc_prediction


# --------------------------------------------------------------------------- supervised


def test_supervised_loss_is_half_ce_plus_half_dice_with_its_gradient():
    """Catches a changed CE or Dice weight (METHODS.md: 0.5 (CE + soft Dice on the foreground))."""
    torch.manual_seed(0)
    method = METHODS["supervised"](CONFIG, TOTAL_STEPS).train()
    batch = make_batch()
    total = method.compute_losses("main", batch, STEP)["loss"]
    reference = ce_dice(method.net(batch.labeled_image), batch.labeled_label, SUP_WEIGHTS)
    assert total.item() == pytest.approx(reference.item(), abs=VALUE_TOL)
    # a changed weight must show: CE and Dice each differ from the other by more than the tolerance
    ce, dice = (ce_dice(method.net(batch.labeled_image), batch.labeled_label, w) for w in ((1, 0), (0, 1)))
    assert abs(ce.item() - dice.item()) > 100 * VALUE_TOL
    assert_same_gradient(total, reference, list(method.net.parameters()))


# --------------------------------------------------------------------------- mean teacher and UA-MT


def teacher_method(name: str, **options):
    """A mean-teacher / UA-MT method whose teacher differs from its student."""
    torch.manual_seed(0)
    method = METHODS[name](CONFIG, TOTAL_STEPS, **options).train()
    perturb(method.teacher, seed=1)
    return method


def mean_teacher_reference(method, batch: Batch, noise_seed: int, mask: torch.Tensor | None = None):
    """L_sup + 0.1 ramp(t, T) C, recomputed: C is the softmax MSE (or UA-MT's masked form with ``mask``).

    The student sees labelled + unlabelled patches in one forward (train-mode BatchNorm over the batch, as
    the method documents); the teacher sees the unlabelled half plus clamp(N(0, 0.1^2), -0.2, 0.2) noise
    drawn right after ``torch.manual_seed(noise_seed)``.
    """
    n = batch.labeled_image.shape[0]
    logits = method.student(torch.cat([batch.labeled_image, batch.unlabeled_image]))
    sup = ce_dice(logits[:n], batch.labeled_label, SUP_WEIGHTS)
    p_student = torch.softmax(logits[n:], dim=1)
    torch.manual_seed(noise_seed)
    noise = (0.1 * torch.randn(batch.unlabeled_image.shape)).clamp(-0.2, 0.2)
    with torch.no_grad():
        p_teacher = torch.softmax(method.teacher(batch.unlabeled_image + noise), dim=1)
    squared = (p_student - p_teacher) ** 2
    if mask is None:
        consistency = squared.mean()
    else:  # UA-MT: sum(mask (p_s - p_t)^2) / (2 sum(mask)), two classes
        consistency = (mask[:, None] * squared).sum() / (2 * mask.sum())
    weight = 0.1 * documented_ramp(STEP, TOTAL_STEPS)
    return sup, consistency, weight


def test_mean_teacher_total_is_sup_plus_ramped_consistency_to_the_noised_teacher():
    """Catches: sup - w C; the target from the student; the teacher's input without noise; wrong weights."""
    method = teacher_method("mean-teacher")
    batch = make_batch()
    seen = []
    method.teacher.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    torch.manual_seed(7)
    losses = method.compute_losses("student", batch, STEP)
    (teacher_input,) = seen  # the teacher ran once, on the unlabelled half with bounded noise
    assert 0 < (teacher_input - batch.unlabeled_image).abs().max() <= 0.2 + 1e-6
    sup, consistency, weight = mean_teacher_reference(method, batch, noise_seed=7)
    assert losses["consistency"].item() == pytest.approx(consistency.item(), rel=1e-5)
    assert losses["loss"].item() == pytest.approx((sup + weight * consistency).item(), abs=VALUE_TOL)
    assert weight * consistency.item() > 20 * VALUE_TOL  # the consistency's share is measurable
    params = list(method.student.parameters())
    assert_same_gradient(losses["loss"], sup + weight * consistency, params)


def test_changing_only_the_teacher_changes_the_consistency_and_not_the_supervised_term():
    """The same student with another teacher: another consistency, the same L_sup; the same teacher again
    (same noise seed): the same consistency, so the change is the teacher's doing, not the noise's.
    """
    method = teacher_method("mean-teacher")
    batch = make_batch()

    def terms() -> tuple[float, float]:
        torch.manual_seed(7)
        losses = method.compute_losses("student", batch, STEP)
        return losses["sup"].item(), losses["consistency"].item()

    sup, consistency = terms()
    assert terms() == (sup, consistency)
    perturb(method.teacher, seed=2, scale=0.05)
    new_sup, new_consistency = terms()
    assert new_sup == sup and abs(new_consistency - consistency) > 1e-3 * consistency


def ua_mt_uncertainty(method, shape: tuple[int, ...]) -> tuple[dict, torch.Tensor]:
    """Fake Monte-Carlo maps: the teacher is certain on the first half of z, the student on the first half
    of x (so an uncertainty from the student selects other voxels); returns the maps and the teacher's mask.
    """
    probs = torch.full((shape[0], 2, *shape[1:]), 0.5)
    teacher_certain, student_certain = halves(shape, 1), halves(shape, 3)
    u = lambda certain: torch.where(certain, LOW_U, HIGH_U)  # noqa: E731
    maps = {id(method.teacher): (probs, u(teacher_certain)), id(method.student): (probs, u(student_certain))}
    return maps, teacher_certain.float()


def test_ua_mt_total_masks_the_consistency_by_the_teachers_uncertainty(monkeypatch):
    """Catches: the uncertainty from the student; a flipped consistency sign; the target from the student."""
    method = teacher_method("ua-mt", mc_samples=2)
    batch = make_batch()
    maps, teacher_mask = ua_mt_uncertainty(method, (2, *PATCH))
    calls = []
    monkeypatch.setattr(ua_mt, "mc_prediction", fake_mc(maps, calls))
    threshold = (0.75 + 0.25 * documented_ramp(STEP, TOTAL_STEPS)) * math.log(2)
    assert LOW_U < threshold < HIGH_U
    torch.manual_seed(7)
    losses = method.compute_losses("student", batch, STEP)
    assert [(net, samples) for net, _, samples in calls] == [(id(method.teacher), 2)]
    assert torch.equal(calls[0][1], batch.unlabeled_image)
    sup, consistency, weight = mean_teacher_reference(method, batch, noise_seed=7, mask=teacher_mask)
    assert losses["mask_fraction"].item() == pytest.approx(0.5)
    assert losses["consistency"].item() == pytest.approx(consistency.item(), rel=1e-5)
    assert losses["loss"].item() == pytest.approx((sup + weight * consistency).item(), abs=VALUE_TOL)
    assert weight * consistency.item() > 20 * VALUE_TOL
    assert_same_gradient(losses["loss"], sup + weight * consistency, list(method.student.parameters()))


# --------------------------------------------------------------------------- Dual-UNet (seed 000)


def make_dual_unet(adversarial: str = "saturating") -> DualUNet:
    """A tiny Dual-UNet whose contextual encoder's code normalisation has seen maps already.

    An untrained encoder gives every map nearly the same code (about 0.03 in every feature), so with the
    initial running statistics (0, 1) gamma L_NCont is about 1e-9, too small to tell a wrong weight from
    rounding. Its running statistics are therefore set from one train-mode pass over random maps, as a
    classifier stage would; gamma L_NCont is then about 1e-2.
    """
    torch.manual_seed(0)
    method = DualUNet(CONFIG, DU_TOTAL_STEPS, mc_samples=2, adversarial=adversarial).train()
    g = torch.Generator().manual_seed(4)
    maps = torch.softmax(3.0 * torch.randn(8, 2, *PATCH, generator=g), dim=1)
    with torch.no_grad():
        method.encoder.norm.momentum = 1.0
        method.encoder(maps)
        method.encoder.norm.momentum = 0.1
    return method


def foreground_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a - b||^2 of seed 000's one sigmoid output: the squared difference of the foreground channel."""
    return (a[:, 1] - b[:, 1]) ** 2


def code_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. 7's ||a - b||^2 between codes ``[N, n]``, averaged over the mini-batch."""
    return ((a - b) ** 2).sum(dim=1).mean()


def dual_unet_mc_maps(method: DualUNet) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Fixed (P^, U^) per network: random class maps, each network certain on a different half-volume."""
    maps = {}
    for q, (net, axis) in enumerate(((method.net1, 1), (method.net2, 3))):
        g = torch.Generator().manual_seed(10 + q)
        p_hat = torch.softmax(2.0 * torch.randn(2, 2, *PATCH, generator=g), dim=1)
        maps[id(net)] = (p_hat, torch.where(halves((2, *PATCH), axis), LOW_U, HIGH_U))
    return maps


def voxel_terms(y: list, mc: list, step: int, length: int) -> tuple[list, list]:
    """L_intra (eq. 3) and L_inter (eqs. 4, 5) of both networks, recomputed from METHODS.md.

    ``y`` are the unlabelled softmax maps, ``mc`` the (P^, U^) of each network; tau1 = H(0.5) and
    tau2 = H(0.7) ramp from 3/4 of their value. ||.||^2 is the foreground channel's squared difference.
    """
    r = documented_ramp(step, length)
    tau1, tau2 = ((0.75 + 0.25 * r) * binary_entropy(p) for p in (0.5, 0.7))
    assert LOW_U < min(tau1, tau2) and max(tau1, tau2) < HIGH_U
    intra = [masked_average(foreground_distance(y[q], mc[q][0]), mc[q][1] < tau1) for q in range(2)]
    y_ = [p.detach() for p in y]
    u = [-(p * torch.log(p + 1e-6)).sum(dim=1) for p in y_]
    stable = [
        (y_[q].argmax(1) == mc[q][0].argmax(1)) & ((u[q] < tau2) | (mc[q][1] < tau2)) for q in range(2)
    ]
    d = [foreground_distance(y_[q], mc[q][0]) for q in range(2)]
    inter = []
    for q, o in ((0, 1), (1, 0)):
        mask = (stable[q] & stable[o] & (d[q] > d[o])) | (~stable[q] & stable[o])
        inter.append(masked_average(foreground_distance(y[q], y_[o]), mask))
    return intra, inter


def adversarial_term(method: DualUNet, labeled: torch.Tensor, unlabeled: torch.Tensor) -> torch.Tensor:
    """Eq. 6 for one segmenter: saturating -BCE(l -> 1, u -> 0); non-saturating BCE(l -> 0, u -> 1)."""
    d_l, d_u = method.classifier(labeled), method.classifier(unlabeled)
    if method.adversarial == "saturating":
        return -0.5 * (bce(d_l, 1) + bce(d_u, 0))
    return 0.5 * (bce(d_l, 0) + bce(d_u, 1))


def ncont_term(method: DualUNet, q: int, labeled: list, unlabeled: list, annotation) -> torch.Tensor:
    """Eq. 7 for network q: ||CE(y^l_q) - CE(y)||^2 + ||CE(y^u_q) - CE(y^u_q')||^2, targets detached,
    the encoder in eval mode (its code normalisation on running statistics)."""
    encoder, training = method.encoder, method.encoder.training
    encoder.eval()
    try:
        return code_distance(encoder(labeled[q]), encoder(annotation).detach()) + code_distance(
            encoder(unlabeled[q]), encoder(unlabeled[1 - q]).detach()
        )
    finally:
        encoder.train(training)


def dual_unet_terms(method: DualUNet, batch: Batch, mc: list) -> dict[str, list[torch.Tensor]]:
    """Every term of each network (index 0 = net1), unweighted, from this test's own forward passes."""
    n = batch.labeled_image.shape[0]
    x = torch.cat([batch.labeled_image, batch.unlabeled_image])
    logits = [method.net1(x), method.net2(x)]
    probs = [torch.softmax(z, dim=1) for z in logits]
    labeled, unlabeled = [p[:n] for p in probs], [p[n:] for p in probs]
    annotation = F.one_hot(batch.labeled_label[:, 0], 2).movedim(-1, 1).float()
    intra, inter = voxel_terms(unlabeled, mc, STEP, DU_RAMP_STEPS)
    return {
        "sup": [ce_dice(z[:n], batch.labeled_label, DUAL_UNET_SUP_WEIGHTS) for z in logits],
        "intra": intra,
        "inter": inter,
        "lcont": [adversarial_term(method, labeled[q], unlabeled[q]) for q in range(2)],
        "ncont": [ncont_term(method, q, labeled, unlabeled, annotation) for q in range(2)],
    }


def dual_unet_reference(method: DualUNet, batch: Batch, mc: list) -> tuple[torch.Tensor, dict]:
    """Sum over both networks of L_sup + alpha (L_intra + L_inter) + beta L_LCont + gamma L_NCont,
    (alpha, beta, gamma) = (0.1, 0.002, 0.1) ramp(t, 4000 T_total / 10000); returns it and the weighted
    terms (summed over both networks).
    """
    r = documented_ramp(STEP, DU_RAMP_STEPS)
    weight = {"sup": 1.0, "intra": 0.1 * r, "inter": 0.1 * r, "lcont": 0.002 * r, "ncont": 0.1 * r}
    terms = dual_unet_terms(method, batch, mc)
    weighted = {name: weight[name] * (pair[0] + pair[1]) for name, pair in terms.items()}
    return sum(weighted.values()), weighted


@pytest.mark.parametrize("adversarial", ["saturating", "non-saturating"])
def test_dual_unet_segmenter_total_is_the_weighted_sum_over_both_networks(monkeypatch, adversarial):
    """Catches: a flipped L_LCont sign (either variant); alpha 0 or missing on L_intra or L_inter; a term
    taken from the wrong network; P^ of one network used for the other; a target that carries gradient.
    """
    method = make_dual_unet(adversarial)
    batch = make_batch()
    maps, calls = dual_unet_mc_maps(method), []
    monkeypatch.setattr(dual_unet_module, "mc_prediction", fake_mc(maps, calls))
    losses = method.compute_losses("segmenters", batch, STEP)
    assert sorted(net for net, _, _ in calls) == sorted([id(method.net1), id(method.net2)])
    assert all(torch.equal(x, batch.unlabeled_image) for _, x, _ in calls)
    mc = [maps[id(method.net1)], maps[id(method.net2)]]
    reference, weighted = dual_unet_reference(method, batch, mc)
    assert losses["loss"].item() == pytest.approx(reference.item(), abs=VALUE_TOL)
    for name, value in weighted.items():  # each term's share is measurable, so its sign and weight are
        assert abs(value.item()) > 20 * VALUE_TOL, name
    assert (weighted["lcont"].item() < 0) == (adversarial == "saturating")  # -BCE < 0 < BCE
    params = [*method.net1.parameters(), *method.net2.parameters()]
    assert_same_gradient(losses["loss"], reference, params)


def test_dual_unet_classifier_stage_is_bce_of_this_iterations_predictions_plus_shape_loss(monkeypatch):
    """Catches flipped classifier targets and a classifier stage that sees other maps than the segmenters'."""
    method = make_dual_unet()
    batch = make_batch()
    monkeypatch.setattr(dual_unet_module, "mc_prediction", fake_mc(dual_unet_mc_maps(method), []))
    method.compute_losses("segmenters", batch, STEP)
    losses = method.compute_losses("classifier", batch, STEP)
    n = batch.labeled_image.shape[0]
    with torch.no_grad():
        x = torch.cat([batch.labeled_image, batch.unlabeled_image])
        probs = [torch.softmax(net(x), dim=1) for net in (method.net1, method.net2)]
    labeled, unlabeled = torch.cat([p[:n] for p in probs]), torch.cat([p[n:] for p in probs])
    annotation = F.one_hot(batch.labeled_label[:, 0], 2).movedim(-1, 1).float()
    classifier = 0.5 * (bce(method.classifier(labeled), 1) + bce(method.classifier(unlabeled), 0))
    maps = torch.cat([annotation, labeled, unlabeled])
    coarse_foreground = F.adaptive_max_pool3d(maps[:, 1:], 4).flatten(1)
    shape = ((method.encoder.shape_head(method.encoder(maps)) - coarse_foreground) ** 2).mean()
    assert losses["classifier_bce"].item() == pytest.approx(classifier.item(), rel=1e-5)
    assert losses["loss"].item() == pytest.approx((classifier + shape).item(), abs=VALUE_TOL)
    aux = [*method.classifier.parameters(), *method.encoder.parameters()]
    assert_same_gradient(losses["loss"], classifier + shape, aux)


def test_dual_unet_each_networks_terms_come_from_its_own_predictions(monkeypatch):
    """Each network's terms come from its own maps and its own P^ (values; L_LCont also by gradient).

    Catches a term computed from one network's maps for both: the L_LCont share of the total's gradient
    is too small to show it there.
    """
    method = make_dual_unet()
    batch = make_batch()
    maps = dual_unet_mc_maps(method)
    monkeypatch.setattr(dual_unet_module, "mc_prediction", fake_mc(maps, []))
    terms, _ = method.terms_per_network(batch, STEP)
    expected = dual_unet_terms(method, batch, [maps[id(method.net1)], maps[id(method.net2)]])
    assert set(terms) == set(expected)
    params = [*method.net1.parameters(), *method.net2.parameters()]
    for name, pair in expected.items():
        for q in range(2):
            assert terms[name][q].item() == pytest.approx(pair[q].item(), rel=1e-5, abs=1e-6), (name, q)
    # L_LCont's two values are nearly equal (the classifier rates both networks' maps alike), so only the
    # gradient of net1's term + 2 net2's tells which maps each term was computed from.
    lcont = terms["lcont"][0] + 2 * terms["lcont"][1]
    assert_same_gradient(lcont, expected["lcont"][0] + 2 * expected["lcont"][1], params)


def test_dual_unet_supervised_term_is_eq_2_bce_plus_dice_at_1_to_1(monkeypatch):
    """METHODS.md "000": L_sup = BCE + Dice at 1:1 (2-class softmax CE equals the sigmoid BCE)."""
    method = make_dual_unet()
    batch = make_batch()
    monkeypatch.setattr(dual_unet_module, "mc_prediction", fake_mc(dual_unet_mc_maps(method), []))
    terms, _ = method.terms_per_network(batch, STEP)
    n = batch.labeled_image.shape[0]
    x = torch.cat([batch.labeled_image, batch.unlabeled_image])
    expected = ce_dice(method.net1(x)[:n], batch.labeled_label, (1.0, 1.0))
    assert terms["sup"][0].item() == pytest.approx(expected.item(), rel=1e-5)
