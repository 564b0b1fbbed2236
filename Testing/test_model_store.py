import json

import pytest
import torch

from SemiSupSegLib.errors import ModelError
from SemiSupSegLib.model_store import list_models, load_model, models_dir, resolve_model, save_model
from SemiSupSegLib.networks import CompactUNet

META = {
    "name": "tiny",
    "method": "supervised",
    "classes": {"0": "background", "1": "instrument"},
    "patch_size": [16, 16, 16],
    "preprocessing": {"target_spacing": [0.5, 0.5, 0.5]},
}


def _save(folder, **extra):
    torch.manual_seed(0)
    nets = {"a": CompactUNet(width=0.125), "b": CompactUNet(width=0.125)}
    save_model(folder, nets, {**META, **extra}, inference_networks=["a", "b"])
    return nets


def test_round_trip_weights_and_description(tmp_path):
    nets = _save(tmp_path / "m")
    model = load_model(tmp_path / "m")
    for name, net in nets.items():
        for key, value in net.state_dict().items():
            assert torch.equal(model.networks[name].state_dict()[key], value)
    assert model.patch_size == (16, 16, 16)
    assert model.preprocessing.target_spacing == (0.5, 0.5, 0.5)
    assert len(model.inference_networks) == 2
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["software"]["torch"] == torch.__version__
    assert meta["networks"]["a"]["width"] == 0.125 and meta["created"]


def test_models_are_found_by_name_in_the_home_folder():
    _save(models_dir() / "by-name")
    assert resolve_model("by-name") == models_dir() / "by-name"
    names = [m["name"] for m in list_models(include_shipped=False)]
    assert names == ["tiny"]


def test_missing_model_names_the_available_ones(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "weights.pt").write_bytes(b"not a torch file"), "cannot load model weights"),
        (lambda d: (d / "weights.pt").unlink(), "weights .* are missing"),
        (lambda d: (d / "model.json").write_text("{broken"), "corrupt"),
        (lambda d: (d / "model.json").unlink(), "has no model.json"),
    ],
)
def test_damaged_model_folders_give_clear_errors(tmp_path, damage, message):
    _save(tmp_path / "m")
    damage(tmp_path / "m")
    with pytest.raises(ModelError, match=message):
        load_model(tmp_path / "m")


def test_weights_that_do_not_fit_the_description(tmp_path):
    _save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["networks"]["a"]["width"] = 0.25
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="does not match its weights"):
        load_model(tmp_path / "m")


def test_pickled_code_is_refused(tmp_path):
    _save(tmp_path / "m")

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"a": Evil()}, tmp_path / "m" / "weights.pt")
    with pytest.raises(ModelError, match="cannot load model weights"):
        load_model(tmp_path / "m")


def test_description_must_be_complete(tmp_path):
    with pytest.raises(ModelError, match="lacks 'preprocessing'"):
        save_model(
            tmp_path, {"a": CompactUNet(width=0.125)}, {k: v for k, v in META.items() if k != "preprocessing"}
        )
