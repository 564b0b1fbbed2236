import pytest
import torch

from SemiSupSegLib.networks import (
    CompactUNet,
    NetworkConfig,
    VNet,
    build_network,
    count_parameters,
    set_mc_dropout,
    size_divisor,
)


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


def test_vnet_follows_the_methods_md_stages_and_returns_named_features_on_non_cubic_input():
    """Catches a changed stage (1, 2, 3, 3, 3 / 3, 3, 2, 1 convs), concatenated skips, or a lost feature."""
    # 9,448,866 parameters at n_filters 16 (UA-MT's VNet is cited at 9.44 M)
    with torch.device("meta"):  # no memory, no initialisation: only the count
        assert count_parameters(VNet(width=1.0)) == 9_448_866
    net = VNet(width=0.125, num_classes=3, dropout=0.0).eval()
    x = torch.randn(1, 1, 16, 32, 48)
    logits, features = net.forward_features(x)
    assert logits.shape == (1, 3, 16, 32, 48)
    assert list(features) == ["enc1", "enc2", "enc3", "enc4", "enc5", "dec4", "dec3", "dec2", "dec1"]
    assert features["enc5"].shape[2:] == (1, 2, 3) and features["dec4"].shape[2:] == (2, 4, 6)
    assert all(features[k].shape[1] == net.feature_channels[k] for k in features)
    assert torch.equal(net(x), logits) and size_divisor("vnet") == 16 and size_divisor("compact-unet") == 4
    # the decoder's first stage sees enc4 added to the upsampled bottleneck (an additive skip)
    with torch.no_grad():
        upsampled = net.ups[0](features["enc5"])
        assert torch.allclose(net.decoders[0](upsampled + features["enc4"]), features["dec4"])


def test_a_vnet_with_a_head_block_saves_and_loads_back_through_the_model_store(tmp_path):
    """Catches ``architecture``/``head_block`` not stored in model.json or not rebuilt from it."""
    from SemiSupSegLib.model_store import load_model, save_model

    torch.manual_seed(0)
    net = build_network(NetworkConfig(architecture="vnet", width=0.125, dropout=0.5, head_block=True)).eval()
    meta = {"name": "v", "method": "coranet", "classes": {"0": "bg", "1": "fg"}, "patch_size": [16] * 3}
    save_model(tmp_path / "v", {"net": net}, {**meta, "preprocessing": {}})
    loaded = load_model(tmp_path / "v").networks["net"]
    assert isinstance(loaded, VNet) and loaded.config == net.config
    x = torch.randn(1, 1, 16, 16, 32)
    assert torch.equal(loaded(x), net(x))
    plain = CompactUNet(width=0.125)
    assert isinstance(plain.head_block, torch.nn.Identity)
    assert not any(k.startswith("head_block") for k in plain.state_dict())  # old models still load
