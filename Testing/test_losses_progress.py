import io
import json
import math

import pytest
import torch

from SemiSupSegLib.losses import ramp, supervised_loss
from SemiSupSegLib.progress import HumanReporter, JsonLinesReporter, make_reporter


def test_ramp_values_from_methods_md():
    assert ramp(0, 40) == pytest.approx(0.0067379, abs=1e-6)
    assert ramp(20, 40) == pytest.approx(0.28650, abs=1e-5)
    assert ramp(40, 40) == 1.0 and ramp(400, 40) == 1.0 and ramp(5, 0) == 1.0


def test_supervised_loss_is_half_ce_plus_half_squared_dice():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 4, 4, 4)
    label = (torch.rand(2, 1, 4, 4, 4) > 0.7).long()
    prob = logits.softmax(1)[:, 1:]
    y = label.float()
    dice = 1 - (2 * (prob * y).sum() + 1e-5) / ((prob**2).sum() + (y**2).sum() + 1e-5)
    ce = torch.nn.functional.cross_entropy(logits, label[:, 0])
    assert supervised_loss()(logits, label).item() == pytest.approx(0.5 * (ce + dice).item(), rel=1e-5)


def test_json_reporter_writes_one_versioned_object_per_line():
    stream = io.StringIO()
    reporter = JsonLinesReporter(stream)
    reporter.emit("progress", step=3, total=10, losses={"loss": torch.tensor(0.5), "bad": math.nan})
    reporter.emit("finished", step=10, total=10)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["protocol"] == 1 and first["event"] == "progress" and first["step"] == 3
    assert first["losses"] == {"loss": 0.5, "bad": None}
    assert json.loads(lines[1])["event"] == "finished"


def test_human_reporter_draws_a_bar_with_eta():
    stream = io.StringIO()
    HumanReporter(stream).emit("progress", step=5, total=10, losses={"loss": 0.25}, eta_seconds=75)
    text = stream.getvalue()
    assert "5/10" in text and "loss 0.2500" in text and "ETA 0:01:15" in text and "#" * 14 in text


def test_unknown_progress_kind():
    with pytest.raises(ValueError, match="unknown progress kind"):
        make_reporter("xml")
