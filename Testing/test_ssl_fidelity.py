"""Fidelity to seed 000 and METHODS.md of the three points issue 13 fixed, each against its equation.

- Voxel terms: ||y^ - P^||^2 of eqs. 3, 5 and 9 is the squared difference of the ONE foreground
  probability (the paper's network has one sigmoid output), not the sum over both softmax channels.
- Monte-Carlo passes: dropout on, input noise, BatchNorm on each pass's own batch statistics, and the
  running statistics neither read nor updated.
- L_NCont: eq. 7's raw squared L2 between contextual-encoder codes, bounded because the codes are.
"""

from __future__ import annotations

import pytest
import torch

from SemiSupSegLib.errors import InputError
from SemiSupSegLib.inference import mc_inputs
from SemiSupSegLib.methods import METHODS, Batch, ua_mt
from SemiSupSegLib.methods import dual_unet as dual_unet_module
from SemiSupSegLib.methods.common import mc_prediction
from SemiSupSegLib.methods.dual_unet import DualUNet, inter_loss, intra_loss, ratio_distance
from SemiSupSegLib.networks import CompactUNet, NetworkConfig

TINY = NetworkConfig(width=0.0625)
PATCH = (16, 20, 24)  # z, y, x all different


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def two_class(foreground: list[float]) -> torch.Tensor:
    """Softmax-like maps ``[1, 2, n]`` with the given foreground probabilities."""
    fg = torch.tensor(foreground)
    return torch.stack([1.0 - fg, fg])[None]


# --------------------------------------------------------------------------- 1. single-channel form


def test_voxel_terms_are_squared_differences_of_the_one_foreground_probability():
    """Eq. 3/9: sum([U^ < tau1] (y^_i - p^_i)^2) / sum([U^ < tau1]) on the foreground probability."""
    y = two_class([0.8, 0.5, 0.0]).requires_grad_()
    p_hat = two_class([0.6, 0.5, 1.0])
    u_hat = torch.tensor([[0.3, 0.2, 0.69]])  # voxel 2 is too uncertain
    assert intra_loss(y, p_hat, u_hat, tau1=0.6).item() == pytest.approx((0.2**2 + 0.0) / 2)
    # the former form, summed over both channels, is exactly twice as large (kept as an option)
    both = DualUNet(TINY, 10, ablation="+intra", voxel_distance="all-channels").voxel_distance
    assert intra_loss(y, p_hat, u_hat, 0.6, both).item() == pytest.approx(2 * (0.2**2) / 2)
    # eq. 5's ||y^_q - y^_q'||^2 likewise: (0.8 - 0.3)^2 and (0.0 - 0.4)^2 over two masked voxels
    other = two_class([0.3, 0.9, 0.4])
    mask = torch.tensor([[True, False, True]])
    assert inter_loss(y, other, mask).item() == pytest.approx((0.25 + 0.16) / 2)
    # more than two classes: the foreground probability is 1 - p(background)
    y3 = torch.tensor([[0.5, 0.3, 0.2], [0.7, 0.1, 0.2]]).T.reshape(1, 3, 2)
    p3 = torch.tensor([[0.7, 0.1, 0.2], [0.7, 0.2, 0.1]]).T.reshape(1, 3, 2)
    assert intra_loss(y3, p3, torch.zeros(1, 2), 0.6).item() == pytest.approx((0.2**2 + 0.0) / 2)
    default = DualUNet(TINY, 10, ablation="+intra").voxel_distance  # the method's default form
    assert default(y, p_hat)[0].tolist() == pytest.approx([0.04, 0.0, 1.0])


# --------------------------------------------------------------------------- 2. BatchNorm in the MC passes


def network_with_running_statistics(dropout: float) -> CompactUNet:
    """A tiny network whose running statistics differ far from any batch's (eval mode would show)."""
    torch.manual_seed(1)
    net = CompactUNet(width=0.0625, dropout=dropout).train()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.fill_(0.5)
            m.running_var.fill_(3.0)
            m.num_batches_tracked.fill_(7)
    return net


def buffers(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.named_buffers()}


def looped_train_mode_passes(net: torch.nn.Module, x: torch.Tensor, samples: int) -> torch.Tensor:
    """The reference: ``samples`` separate train-mode forwards (batch statistics of their own B patches),
    each followed by restoring the BatchNorm buffers it updated."""
    inputs = mc_inputs(x, samples, None)
    saved, b, probs = buffers(net), x.shape[0], []
    with torch.no_grad():
        for i in range(samples):
            probs.append(torch.softmax(net.train()(inputs[i * b : (i + 1) * b]), dim=1))
            net.load_state_dict(saved, strict=False)
    return torch.stack(probs).mean(dim=0)


def test_mc_passes_use_their_own_batch_statistics_and_leave_running_statistics_untouched():
    net = network_with_running_statistics(dropout=0.0)
    x = torch.randn(2, 1, *PATCH) + torch.linspace(-1, 1, PATCH[2])
    before = buffers(net)
    net.eval()  # the flags must come back as they were, whatever they were
    torch.manual_seed(5)
    p_hat, u_hat = mc_prediction(net, x, 4)  # default: batch statistics
    assert all(torch.equal(before[k], v) for k, v in net.named_buffers()), "running statistics changed"
    assert not any(m.training for m in net.modules())
    torch.manual_seed(5)
    reference = looped_train_mode_passes(net, x, 4)
    assert (p_hat - reference).abs().max() < 1e-5
    assert torch.allclose(u_hat, -(reference * torch.log(reference + 1e-6)).sum(1), atol=1e-5)
    # the former mode reads the running statistics: a different P^ for this network
    torch.manual_seed(5)
    running, _ = mc_prediction(net, x, 4, batchnorm="running")
    assert (running - p_hat).abs().max() > 0.05
    # dropout is active in the passes (a network with dropout gives another P^ from the same noise)
    dropout = CompactUNet(width=0.0625, dropout=0.5)
    dropout.load_state_dict(net.state_dict())
    torch.manual_seed(5)
    assert (mc_prediction(dropout, x, 4)[0] - p_hat).abs().max() > 1e-3
    with pytest.raises(InputError, match="mc_batchnorm"):
        mc_prediction(net, x, 2, batchnorm="eval")


def test_ua_mt_and_dual_unet_run_their_passes_on_batch_statistics_by_default(monkeypatch):
    seen = []

    def spy(net, x, samples, precision="fp32", batchnorm="batch"):
        seen.append(batchnorm)
        probs = torch.full((x.shape[0], 2, *x.shape[2:]), 0.5)
        return probs, torch.zeros(x.shape[0], *x.shape[2:])

    monkeypatch.setattr(ua_mt, "mc_prediction", spy)
    monkeypatch.setattr(dual_unet_module, "mc_prediction", spy)
    g = torch.Generator().manual_seed(0)
    label = (torch.rand(2, 1, *PATCH, generator=g) > 0.8).long()
    batch = Batch(torch.randn(2, 1, *PATCH, generator=g), label, torch.randn(2, 1, *PATCH, generator=g))
    for options in ({}, {"mc_batchnorm": "running"}):
        METHODS["ua-mt"](TINY, 10, mc_samples=2, **options).train().compute_losses("student", batch, 5)
        du = DualUNet(TINY, 10, ablation="+intra", mc_samples=2, **options).train()
        du.compute_losses("segmenters", batch, 5)
    assert seen == ["batch", "batch", "batch", "running", "running", "running"]


# --------------------------------------------------------------------------- 3. L_NCont


def test_ncont_is_raw_squared_l2_of_codes_that_stay_bounded_when_the_encoders_input_grows():
    """Eq. 7 per network: ||CE(y^l_q) - CE(y)||^2 + ||CE(y^u_q) - CE(y^u_q')||^2, CE's codes bounded.

    CE is positively homogeneous without its biases (strided convs, LeakyReLU), so scaling its input by
    100 and 10^4 is what a growth of its weights during training does to its output.
    """
    torch.manual_seed(0)
    du = DualUNet(TINY, 10, ablation="+NCont")
    du.encoder.eval()  # as in the segmenters' stage: the code normalised by its running statistics
    with torch.no_grad():
        for conv in du.encoder.modules():
            if isinstance(conv, torch.nn.Conv3d):
                conv.bias.zero_()
    g = torch.Generator().manual_seed(3)
    maps = torch.softmax(3.0 * torch.randn(6, 2, 16, 16, 16, generator=g), dim=1)

    def l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ((du.encoder(a) - du.encoder(b)) ** 2).sum(dim=1).mean()

    for scale in (1.0, 100.0, 1e4):
        m = scale * maps
        labeled, unlabeled, annotation = [m[0:2], m[2:4]], [m[4:6], m[0:2].flip(2)], m[2:4]
        terms = du._ncont(labeled, unlabeled, annotation)
        expected = l2(labeled[0], annotation) + l2(unlabeled[0], unlabeled[1])  # network 1
        assert terms[0].item() == pytest.approx(expected.item(), rel=1e-5), scale
        assert (du.encoder(m) ** 2).sum(dim=1).max().item() < 1.0, scale  # every code's squared length
        assert all(0.0 < t.item() < 8.0 for t in terms), scale
        if scale == 100.0:  # raw L2, not the ratio ||a - b||^2 / (||a||^2 + ||b||^2)
            a, b = du.encoder(labeled[0]), du.encoder(annotation)
            assert ((a - b) ** 2).sum(1).mean().item() > 1e-5
            assert abs(ratio_distance(a, b).item() - l2(labeled[0], annotation).item()) > 1e-3
