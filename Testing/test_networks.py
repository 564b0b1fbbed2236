import pytest
import torch

from SemiSupSegLib.networks import CompactUNet, NetworkConfig, build_network, count_parameters, set_mc_dropout


def test_full_width_parameter_count_matches_table_one():
    # Table I read literally: 5,363,298 parameters (the paper rounds to "about 4.5 M").
    net = CompactUNet(width=1.0)
    n = count_parameters(net)
    assert n == 5_363_298
    assert 4.0e6 < n < 5.6e6


def test_shapes_and_named_features():
    net = CompactUNet(width=0.125, num_classes=3).eval()
    x = torch.randn(2, 1, 16, 24, 32)
    logits, features = net.forward_features(x)
    assert logits.shape == (2, 3, 16, 24, 32)
    assert set(features) == {"enc1", "enc2", "enc3", "dec2", "dec1"}
    assert features["enc2"].shape[2:] == (8, 12, 16)
    assert features["enc3"].shape[2:] == (4, 6, 8)
    assert features["dec1"].shape == (2, net.feature_channels["dec1"], 16, 24, 32)
    assert torch.equal(net(x), logits)


def test_width_multiplier_scales_parameters():
    assert count_parameters(CompactUNet(width=0.5)) < count_parameters(CompactUNet(width=1.0)) / 3


def test_mc_dropout_makes_passes_differ_only_when_active():
    torch.manual_seed(0)
    net = CompactUNet(width=0.125).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
        set_mc_dropout(net, True)
        assert not torch.equal(net(x), net(x))
        assert not any(m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d))


def test_build_from_config_round_trip_and_unknown_architecture():
    cfg = NetworkConfig(width=0.25, num_classes=2, dropout=0.3)
    net = build_network(cfg.to_dict())
    assert net.config == cfg
    with pytest.raises(ValueError, match="unknown network architecture"):
        build_network({"architecture": "resnet"})


def test_mask_dropout_matches_torch_dropout_statistics():
    from SemiSupSegLib.networks import MaskDropout

    torch.manual_seed(0)
    x = torch.ones(200_000, requires_grad=True)
    layer = MaskDropout(0.3).train()
    y = layer(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.01
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)  # gradient flows through the kept elements only
    assert torch.equal(layer.eval()(x), x) and torch.equal(MaskDropout(1.0).train()(x), torch.zeros_like(x))
