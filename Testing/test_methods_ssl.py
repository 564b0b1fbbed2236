"""Semi-supervised methods: mean-teacher, UA-MT and Dual-UNet (seed 000).

Hand-computed values for ramps, thresholds and the voxel masks; gradient isolation; batched Monte-Carlo
passes; tiny end-to-end runs on the phantom (16^3 patches, width 0.125).
"""

import io
import json
import math

import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from SemiSupSegLib.dataset import load_dataset
from SemiSupSegLib.errors import InputError
from SemiSupSegLib.inference import mc_inputs, segment
from SemiSupSegLib.losses import binary_entropy
from SemiSupSegLib.methods import METHODS, Batch
from SemiSupSegLib.methods.common import ema_decay, mc_prediction, paper_ramp_steps
from SemiSupSegLib.methods.dual_unet import (
    ABLATIONS,
    DualUNet,
    _Predictions,
    classifier_bce,
    inter_loss,
    inter_mask,
    intra_loss,
    ratio_distance,
    squared_l2_distance,
    stable_voxels,
)
from SemiSupSegLib.metrics import segmentation_metrics
from SemiSupSegLib.model_store import load_model
from SemiSupSegLib.networks import CompactUNet, NetworkConfig
from SemiSupSegLib.progress import JsonLinesReporter
from SemiSupSegLib.training import TrainConfig, Trainer

TINY = NetworkConfig(width=0.125)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny networks: a second intra-op thread only adds synchronisation (6x slower on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(seed: int = 0, size: int = 16) -> Batch:
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(2, 1, size, size, size, dtype=torch.long)
    label[0, 0, 4:10, 4:10, 4:10] = 1
    label[1, 0, 8:14, 2:6, 6:12] = 1
    image = torch.randn(2, 1, size, size, size, generator=g) + 2.0 * label.float()
    return Batch(image, label, torch.randn(2, 1, size, size, size, generator=g))


def _boxes(seed: int, n: int = 8, size: int = 16) -> torch.Tensor:
    """One-hot maps ``[n, 2, size^3]`` of one random 6^3 box each."""
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(n, size, size, size, dtype=torch.long)
    for i, (z, y, x) in enumerate(torch.randint(0, size - 6, (n, 3), generator=g).tolist()):
        label[i, z : z + 6, y : y + 6, x : x + 6] = 1
    return F.one_hot(label, 2).movedim(-1, 1).float()


def _confident(method: DualUNet) -> DualUNet:
    """Bias both heads towards background so that predictions are certain and the L_inter masks non-empty."""
    with torch.no_grad():
        for net in (method.net1, method.net2):
            net.head.bias.copy_(torch.tensor([2.5, -2.5]))
    return method


def _grads(module: torch.nn.Module, loss: torch.Tensor) -> list:
    return torch.autograd.grad(loss, list(module.parameters()), retain_graph=True, allow_unused=True)


def _nonzero(grads) -> bool:
    return any(g is not None and g.abs().sum() > 0 for g in grads)


# --------------------------------------------------------------------------- schedules


def test_ramps_thresholds_and_ema_decay_at_given_steps():
    assert binary_entropy(0.5) == pytest.approx(0.693147, abs=1e-6)
    assert binary_entropy(0.7) == pytest.approx(0.610864, abs=1e-6)
    assert (
        paper_ramp_steps(10000) == 4000 and paper_ramp_steps(30000) == 4000 and paper_ramp_steps(500) == 200
    )
    du = DualUNet(TINY, 10000)
    assert du.ramp_steps == 4000
    assert du.loss_weights(4000) == pytest.approx({"alpha": 0.1, "beta": 0.002, "gamma": 0.1})
    assert du.loss_weights(2000)["alpha"] == pytest.approx(0.1 * 0.28650, abs=1e-6)
    assert du.loss_weights(0)["gamma"] == pytest.approx(0.1 * 0.0067379, abs=1e-7)
    assert du.thresholds(4000) == pytest.approx((0.693147, 0.610864), abs=1e-6)
    assert du.thresholds(0) == pytest.approx((0.7516845 * 0.693147, 0.7516845 * 0.610864), abs=1e-6)
    assert du.thresholds(2000)[1] == pytest.approx((0.75 + 0.25 * 0.28650) * 0.610864, abs=1e-6)
    assert DualUNet(TINY, 50, ramp_steps=40).thresholds(20)[0] == pytest.approx(
        0.8216 * math.log(2), abs=1e-4
    )
    ua = METHODS["ua-mt"](TINY, 40)
    assert ua.threshold(20) == pytest.approx((0.75 + 0.25 * 0.28650) * math.log(2), abs=1e-6)
    assert ua.threshold(40) == pytest.approx(math.log(2))
    assert [ema_decay(t) for t in (0, 1, 9, 1000)] == pytest.approx([0.0, 0.5, 0.9, 0.99])


def test_ema_teacher_copies_the_student_at_step_0_then_averages_parameters_only():
    mt = METHODS["mean-teacher"](TINY, 10)
    s, t = mt.student, mt.teacher
    with torch.no_grad():
        for p in s.parameters():
            p.add_(1.0)
        s.enc1[0][2].running_mean.fill_(5.0)
    mt.after_iteration(0)
    assert all(torch.equal(a, b) for a, b in zip(s.parameters(), t.parameters(), strict=True))
    assert not torch.equal(s.enc1[0][2].running_mean, t.enc1[0][2].running_mean)  # buffers are not averaged
    before = [p.clone() for p in t.parameters()]
    with torch.no_grad():
        for p in s.parameters():
            p.add_(2.0)
    mt.after_iteration(1)  # decay 0.5
    for old, new, cur in zip(before, t.parameters(), s.parameters(), strict=True):
        assert torch.allclose(new, 0.5 * old + 0.5 * cur)


# --------------------------------------------------------------------------- voxel terms by hand


def test_inter_mask_on_a_hand_built_case_including_the_not_s1_and_s2_branch():
    s1 = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.bool)
    s2 = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1], dtype=torch.bool)
    d1 = torch.tensor([0.1, 0.3, 0.1, 0.3, 0.1, 0.3, 0.1, 0.3])
    d2 = torch.full((8,), 0.2)
    # net 1 learns where it is unstable but net 2 is stable (voxels 2, 3) and, where both are stable,
    # where it is farther from its own MC mean than net 2 (voxel 7).
    assert inter_mask(s1, s2, d1, d2).tolist() == [False, False, True, True, False, False, False, True]
    # mirrored for net 2: net 1 stable, net 2 not (4, 5); both stable and D2 > D1 (6).
    assert inter_mask(s2, s1, d2, d1).tolist() == [False, False, False, False, True, True, True, False]


def test_stable_voxels_need_the_same_class_and_one_certain_estimate():
    p = lambda fg: torch.tensor([[1 - v for v in fg], fg]).reshape(1, 2, -1)  # noqa: E731
    y = p([0.9, 0.9, 0.6, 0.6])
    p_hat = p([0.2, 0.95, 0.55, 0.6])  # voxel 0 changes class
    tau2 = binary_entropy(0.7)
    u = torch.tensor([[0.3, 0.3, 0.67, 0.67]])
    u_hat = torch.tensor([[0.3, 0.69, 0.69, 0.5]])
    assert stable_voxels(y, p_hat, u, u_hat, tau2).tolist() == [[False, True, False, True]]


def test_inter_loss_averages_over_the_mask_with_the_other_network_detached():
    y1 = torch.tensor([[[0.9, 0.5, 0.2]], [[0.1, 0.5, 0.8]]]).reshape(1, 2, 3).requires_grad_()
    y2 = torch.tensor([[[0.7, 0.5, 0.0]], [[0.3, 0.5, 1.0]]]).reshape(1, 2, 3).requires_grad_()
    mask = torch.tensor([[True, False, True]])
    loss = inter_loss(y1, y2, mask)  # foreground probability: (0.9 - 0.7)^2 and (0.2 - 0.0)^2
    assert loss.item() == pytest.approx((0.04 + 0.04) / 2)
    loss.backward()
    assert y2.grad is None and y1.grad[0, :, 1].abs().sum() == 0


def test_intra_loss_selects_only_voxels_below_the_threshold():
    y = torch.tensor([[0.8, 0.5, 0.0], [0.2, 0.5, 1.0]]).reshape(1, 2, 3).requires_grad_()
    p_hat = torch.tensor([[0.6, 0.5, 1.0], [0.4, 0.5, 0.0]]).reshape(1, 2, 3)
    u_hat = torch.tensor([[0.3, 0.2, 0.69]])  # voxel 2: far from P^ but too uncertain
    loss = intra_loss(y, p_hat, u_hat, tau1=0.6)
    assert loss.item() == pytest.approx(0.04 / 2)  # voxel 0: (0.8 - 0.6)^2 of the one probability
    loss.backward()
    assert y.grad[0, :, 2].abs().sum() == 0 and y.grad[0, :, 0].abs().sum() > 0
    assert intra_loss(y, p_hat, u_hat, tau1=0.1).item() == 0.0  # empty mask: 0, not NaN


# --------------------------------------------------------------------------- gradients


def test_each_dual_unet_term_of_network_1_reaches_network_1_only():
    torch.manual_seed(0)
    du = _confident(DualUNet(TINY, 100, mc_samples=2)).train()
    terms, stats = du.terms_per_network(_batch(), step=100)
    assert set(terms) == {"sup", "intra", "inter", "lcont", "ncont"} and 0 < stats["inter_mask"] < 1
    for name in ("intra", "inter", "lcont", "ncont"):
        loss = terms[name][0]
        assert loss.item() != 0.0, name
        assert _nonzero(_grads(du.net1, loss)), name
        assert all(g is None for g in _grads(du.net2, loss)), name
        assert all(g is None for g in _grads(du.classifier, loss) + _grads(du.encoder, loss)), name
    assert all(g is None for g in _grads(du.net1, terms["inter"][1]))


def test_stages_update_only_their_own_networks_and_the_classifier_comes_second():
    torch.manual_seed(0)
    du = DualUNet(TINY, 20).train()
    assert [s.stage for s in du.optimizers()] == ["segmenters", "classifier"]
    seg_params = {id(p) for p in du.optimizers()[0].parameters}
    aux = [*du.classifier.parameters(), *du.encoder.parameters()]
    assert seg_params == {id(p) for p in [*du.net1.parameters(), *du.net2.parameters()]}
    assert {id(p) for p in du.optimizers()[1].parameters} == {id(p) for p in aux}
    calls = []
    du.net1.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    batch = _batch()
    du.compute_losses("segmenters", batch, 10)["loss"].backward()
    assert all(p.grad is None for p in aux)
    du.zero_grad(set_to_none=True)
    n_seg = len(calls)
    losses = du.compute_losses("classifier", batch, 10)
    losses["loss"].backward()
    assert len(calls) == n_seg  # the classifier stage reuses this iteration's predictions
    assert all(p.grad is None for p in [*du.net1.parameters(), *du.net2.parameters()])
    assert all(p.grad is not None for p in aux)
    assert math.isfinite(losses["classifier_bce"].item()) and math.isfinite(losses["encoder_shape"].item())


def test_teachers_get_no_gradient():
    torch.manual_seed(0)
    for name in ("mean-teacher", "ua-mt"):
        method = METHODS[name](TINY, 10, mc_samples=2) if name == "ua-mt" else METHODS[name](TINY, 10)
        method.train()
        losses = method.compute_losses("student", _batch(), 10)
        losses["loss"].backward()
        assert all(p.grad is None for p in method.teacher.parameters())
        assert all(p.grad is not None for p in method.student.parameters())
        assert losses["consistency"].item() > 0


# --------------------------------------------------------------------------- Monte-Carlo passes


def test_mc_passes_run_as_one_batched_forward_inside_a_dual_unet_step():
    torch.manual_seed(0)
    du = DualUNet(TINY, 20, ablation="+intra+inter", mc_samples=8).train()
    seen = []
    du.net2.register_forward_pre_hook(
        lambda m, a: seen.append((a[0].shape[0], torch.is_grad_enabled(), m.training))
    )
    du.compute_losses("segmenters", _batch(), 5)
    # training forward, then 8 x 2 MC patches in train mode (dropout; BatchNorm on batch statistics)
    assert seen == [(4, True, True), (16, False, True)]
    assert du.net2.training and all(m.training for m in du.net2.modules())


def test_batched_mc_passes_on_running_statistics_equal_looped_eval_passes():
    """The ``mc_batchnorm="running"`` mode (before issue 13); the default is in test_ssl_fidelity.py."""
    torch.manual_seed(1)
    net = CompactUNet(width=0.125, dropout=0.0).train()
    x = torch.randn(2, 1, 16, 16, 16)
    torch.manual_seed(5)
    batched, u = mc_prediction(net, x, 4, batchnorm="running")
    torch.manual_seed(5)
    inputs = mc_inputs(x, 4, None)
    net.eval()
    with torch.no_grad():
        looped = torch.stack([torch.softmax(net(inputs[2 * i : 2 * i + 2]), 1) for i in range(4)]).mean(0)
    assert torch.allclose(batched, looped, atol=1e-5)
    assert torch.allclose(u, -(looped * torch.log(looped + 1e-6)).sum(1), atol=1e-5)
    dropout = CompactUNet(width=0.125, dropout=0.5)
    dropout.load_state_dict(net.state_dict())
    # dropout is active in the passes
    assert (mc_prediction(dropout, x, 4, batchnorm="running")[0] - batched).abs().max() > 1e-3


# --------------------------------------------------------------------------- contextual terms


def test_adversarial_sign_conventions():
    torch.manual_seed(0)
    maps_l = torch.softmax(torch.randn(2, 2, 16, 16, 16), 1).requires_grad_()
    maps_u = torch.softmax(torch.randn(2, 2, 16, 16, 16), 1)
    du = DualUNet(TINY, 10, ablation="+LCont")
    d_bce = classifier_bce(du.classifier(maps_l), du.classifier(maps_u))
    saturating = du._adversarial(maps_l, maps_u)
    assert saturating.item() == pytest.approx(-d_bce.item(), rel=1e-6)  # eq. 6: segmenters maximise BCE
    # a step of the segmenters' term makes the classifier's task harder
    (grad,) = torch.autograd.grad(saturating, maps_l)
    worse = classifier_bce(du.classifier(maps_l - 50.0 * grad), du.classifier(maps_u))
    assert worse.item() > d_bce.item()
    ns = DualUNet(TINY, 10, ablation="+LCont", adversarial="non-saturating")
    ns.classifier.load_state_dict(du.classifier.state_dict())
    flipped = classifier_bce(du.classifier(maps_u), du.classifier(maps_l))
    assert ns._adversarial(maps_l, maps_u).item() == pytest.approx(flipped.item(), rel=1e-6)


def test_ratio_distance_option_is_bounded_and_scale_free():
    """``ncont_distance="ratio"`` (before issue 13): ||a - b||^2 / (||a||^2 + ||b||^2), unbounded codes."""
    torch.manual_seed(0)
    a, b = torch.randn(3, 16), torch.randn(3, 16)
    base = ratio_distance(a, b).item()
    assert ratio_distance(1000 * a, 1000 * b).item() == pytest.approx(base, rel=1e-5)
    assert ratio_distance(b, b).item() == 0.0
    assert ratio_distance(torch.zeros_like(b), b).item() == pytest.approx(1.0)
    assert ratio_distance(-b, b).item() == pytest.approx(2.0)  # the largest value: opposite codes
    assert ratio_distance(1e-6 * a, 1e3 * b).item() <= 2.0
    du = DualUNet(TINY, 10, ablation="+NCont", ncont_distance="ratio")
    assert du.code_distance is ratio_distance and not du.encoder.bounded
    assert squared_l2_distance(a, b).item() == pytest.approx(((a - b) ** 2).sum(1).mean().item())


def test_contextual_encoder_does_not_collapse_so_ncont_is_not_trivially_zero():
    """CE is trained on the shape signal (classifier stage), never on L_NCont: distances grow, not vanish."""
    torch.manual_seed(0)
    du = DualUNet(TINY, 100, ablation="+NCont", classifier_lr=1e-3)
    batch = _batch()
    annotation = F.one_hot(batch.labeled_label[:, 0], 2).movedim(-1, 1).float()
    shifted = annotation.roll(shifts=(6, 6), dims=(3, 4))  # a prediction in the wrong place

    def distance() -> float:
        with torch.no_grad():
            return squared_l2_distance(du.encoder(shifted), du.encoder(annotation)).item()

    before = distance()
    optimizer = torch.optim.Adam(du.optimizers()[1].parameters, lr=1e-3)
    for step in range(40):
        # the classifier stage as in training, on cached maps of this "iteration": random box shapes
        maps = _boxes(step)
        du._pending = _Predictions([maps[:2], maps[2:4]], [maps[4:6], maps[6:]], maps[:2])
        losses = du.compute_losses("classifier", batch, step)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    after = distance()
    assert after > 5e-3 and after > 10 * before, (before, after)
    terms, _ = du.terms_per_network(batch, 100)
    assert terms["ncont"][0].item() > 1e-3


# --------------------------------------------------------------------------- options


def test_ablation_presets_switches_and_bad_options():
    expected = {
        "DU-Lsup": set(),
        "+intra": {"intra"},
        "+inter": {"inter"},
        "+intra+inter": {"intra", "inter"},
        "+LCont": {"intra", "inter", "lcont"},
        "+NCont": {"intra", "inter", "ncont"},
        "all": {"intra", "inter", "lcont", "ncont"},
    }
    assert set(ABLATIONS) == set(expected)
    for name, on in expected.items():
        assert {t for t, v in DualUNet(TINY, 10, ablation=name).terms.items() if v} == on
    long = DualUNet(TINY, 10, ablation="DU-Lsup+intra+inter+LCont+NCont")
    assert all(long.terms.values())
    off = DualUNet(TINY, 10, intra=False, lcont="false")
    assert off.terms == {"intra": False, "inter": True, "lcont": False, "ncont": True}
    assert [s.stage for s in off.optimizers()] == ["segmenters", "classifier"]
    plain = DualUNet(TINY, 10, ablation="DU-Lsup")
    assert not plain.uses_unlabeled and [s.stage for s in plain.optimizers()] == ["segmenters"]
    bad_options = (
        {"intar": False},
        {"ablation": "+foo"},
        {"adversarial": "wgan"},
        {"inter": "maybe"},
        {"voxel_distance": "l1"},
        {"sup_weights": "2:1"},
        {"ncont_distance": "cosine"},
        {"mc_batchnorm": "eval"},
    )
    for bad in bad_options:
        with pytest.raises(InputError):
            DualUNet(TINY, 10, **bad)
    with pytest.raises(InputError, match="mc_samples"):
        METHODS["mean-teacher"](TINY, 10, mc_samples=4)
    for cls in (METHODS["mean-teacher"], METHODS["ua-mt"], DualUNet):
        assert cls.uses_unlabeled and cls.description and "\n" not in cls.description


def test_init_from_one_stored_network_fills_student_teacher_and_both_branches():
    source = CompactUNet(width=0.125).state_dict()
    for name in ("mean-teacher", "ua-mt"):
        method = METHODS[name](TINY, 10)
        method.init_from({"net": source})
        for net in (method.student, method.teacher):
            assert all(torch.equal(v, net.state_dict()[k]) for k, v in source.items())
    du = DualUNet(TINY, 10)
    assert du.init_from({"net": source}) == ["net1", "net2"]
    assert all(torch.equal(du.net1.state_dict()[k], du.net2.state_dict()[k]) for k in source)


# --------------------------------------------------------------------------- end to end


def _config(data, out, **kw):
    base = dict(
        data=str(data),
        out=str(out),
        steps=1,
        batch=2,
        patch_size=(16, 16, 16),
        width=0.125,
        val_cases=1,
        val_every=1000,
        checkpoint_every=1000,
        translation=6,
        lr=1e-3,
    )
    base.update(kw)
    return TrainConfig(**base)


def _run(config) -> tuple:
    stream = io.StringIO()
    folder = Trainer(config, JsonLinesReporter(stream)).run()
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    return folder, [e["losses"] for e in events if e["event"] == "progress"]


@pytest.mark.parametrize("method", ["mean-teacher", "ua-mt"])
def test_one_step_of_each_teacher_method_is_finite_and_saves_the_teacher(tiny_phantom, tmp_path, method):
    folder, losses = _run(
        _config(
            tiny_phantom,
            tmp_path / "m",
            method=method,
            method_options={"mc_samples": 2} if method == "ua-mt" else {},
        )
    )
    assert losses and all(math.isfinite(v) for v in losses[-1].values())
    model = load_model(folder)
    assert list(model.networks) == ["teacher"] and len(model.inference_networks) == 1
    assert model.meta["method"] == method


def _dice(model, case) -> float:
    image, label = sitk.ReadImage(str(case.image)), sitk.ReadImage(str(case.label))
    pred = sitk.GetArrayFromImage(segment(model, image, case.center).label) > 0
    return segmentation_metrics(pred, sitk.GetArrayFromImage(label) > 0, image.GetSpacing()[::-1])["dice"]


def test_dual_unet_improves_validation_dice_saves_both_networks_and_fine_tunes(tiny_phantom, tmp_path):
    """12 steps of the full method from a fixed seed against its own step-0 weights (same seed, 0 steps)."""

    def dual_unet(out: str, **kw) -> TrainConfig:  # 2 Monte-Carlo passes: their number does not matter here
        options = {"mc_samples": 2}
        return _config(tiny_phantom, tmp_path / out, method="dual-unet", method_options=options, **kw)

    start = Trainer(dual_unet("start", steps=0)).run()
    folder, losses = _run(dual_unet("m", steps=12, val_every=12))
    assert len(losses) == 12 and all(math.isfinite(v) for row in losses for v in row.values())
    assert {"segmenters/loss", "segmenters/inter", "classifier/classifier_bce"} <= set(losses[-1])
    model = load_model(folder)
    assert list(model.networks) == ["net1", "net2"] and len(model.inference_networks) == 2
    val_case = load_dataset(tiny_phantom).training[-1]
    before, after = _dice(load_model(start), val_case), _dice(model, val_case)
    assert after == pytest.approx(model.meta["metrics"]["validation"]["dice"], abs=1e-6)
    assert after > before + 0.02, (before, after)
    # fine-tuning: the trained model initialises both branches, and a step from it runs
    child, child_losses = _run(dual_unet("child", init=str(folder), lr=1e-12, val_cases=0))
    child_model = load_model(child)
    for name in ("net1", "net2"):
        a, b = model.networks[name].state_dict(), child_model.networks[name].state_dict()
        assert all(
            torch.allclose(a[k].float(), b[k].float(), atol=1e-6)
            for k in a
            if "running" not in k and a[k].is_floating_point()
        )
    assert all(math.isfinite(v) for v in child_losses[-1].values())


def test_mc_precision_option_runs_the_passes_in_bf16_and_stays_close_to_fp32():
    from SemiSupSegLib.inference import bf16_supported

    torch.manual_seed(0)
    # without dropout: bf16 and fp32 passes would draw other dropout masks from the same random state
    net = CompactUNet(width=0.125, dropout=0.0).train()
    x = torch.randn(2, 1, 16, 16, 16)
    state = torch.get_rng_state()
    p32, _ = mc_prediction(net, x, 4, "fp32")
    torch.set_rng_state(state)
    p16, _ = mc_prediction(net, x, 4, "bf16")
    assert p16.dtype == torch.float32 and torch.isfinite(p16).all()
    if bf16_supported("cpu"):
        assert not torch.equal(p16, p32)  # the option really changes the arithmetic
    assert (p16 - p32).abs().max() < 0.02  # 0.005 measured (BatchNorm on batch statistics)
    with pytest.raises(InputError):
        mc_prediction(net, x, 2, "fp8")
