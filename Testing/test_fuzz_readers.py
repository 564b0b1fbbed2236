"""Property-based tests of the readers of untrusted text: any input gives a result or a named error.

* ``dataset.json`` (:func:`SemiSupSegLib.dataset.load_dataset`): a Dataset or a DatasetError;
* ``model.json`` (:func:`SemiSupSegLib.model_store.load_model`, with real weights beside it, and the
  panels' listing ``list_models``): a model or a ModelError;
* the progress protocol's JSON lines, read by both panels (``childprocess.ProtocolParser`` on chunks,
  ``childprocess.parse_line`` on one line, text or bytes): an event, ``None`` (noise) or the named
  protocol error.

``max_examples`` keeps the whole file under a few seconds; a failure prints the input that caused it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from SemiSupSegLib.childprocess import ProtocolError, ProtocolParser, parse_line
from SemiSupSegLib.dataset import Dataset, load_dataset
from SemiSupSegLib.errors import DatasetError, ModelError
from SemiSupSegLib.model_index import list_models
from SemiSupSegLib.model_store import load_model
from SemiSupSegLib.networks import CompactUNet


def examples(n: int) -> settings:
    """``n`` random inputs per test, sized so that the whole file runs in a few seconds on 2 cores."""
    fixtures = [HealthCheck.function_scoped_fixture]  # tmp_path is reused: each input overwrites its file
    return settings(max_examples=n, deadline=None, database=None, suppress_health_check=fixtures)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),  # JSON integers may exceed any float
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["../x.nii.gz", "/etc/passwd", "~/a.nrrd", "a\x00b", "x" * 300, "images/a.nii.gz", "1"]),
    st.sampled_from([10**400, -(10**400), 1e308, 0]),  # beyond a float, the largest float
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def dumps(value) -> str:
    """JSON as Python writes it, NaN and Infinity included (readers meet them in the wild)."""
    return json.dumps(value)


# ------------------------------------------------------------------------------------------ dataset.json

entries = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"image": scalars},
        optional={"label": scalars, "center": st.one_of(json_values, st.lists(scalars, min_size=1, max_size=3))},  # noqa: E501
    ),
)
datasets = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "training": st.one_of(json_values, st.lists(entries, max_size=3)),
            "unlabeled": st.one_of(json_values, st.lists(entries, max_size=3)),
            "test": st.one_of(json_values, st.lists(entries, max_size=3)),
            "labels": json_values,
            "name": json_values,
        },
    ),
)


@examples(40)
@example(content=json.dumps({"training": [{"image": "a.nii.gz", "center": [10**400, 0, 0]}]}))
@given(content=st.one_of(datasets.map(dumps), st.text(max_size=40)))
def test_any_dataset_json_gives_a_dataset_or_a_dataset_error(content, tmp_path):
    path = tmp_path / "dataset.json"
    path.write_bytes(content.encode("utf-8", errors="surrogatepass"))  # lone surrogates: not UTF-8
    try:
        result = load_dataset(path, check_images=False)
    except DatasetError as err:
        assert err.problems and all(isinstance(p, str) and p for p in err.problems)
        return
    assert isinstance(result, Dataset)
    assert all(case.center is None or all(math.isfinite(v) for v in case.center) for case in result.cases())


# ------------------------------------------------------------------------------------------ model.json


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A folder whose ``weights.pt`` holds the weights of network ``net`` (width 0.0625)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("fuzz")
    torch.save({"net": CompactUNet(width=0.0625).state_dict()}, folder / "weights.pt")
    return folder


# Values that pass the checks stay small (building a network of width 16 takes seconds); the rest are
# every kind of wrong value.
counts = st.sampled_from([1, 2, 3, 0, -1, 65, 1001, 2.5, "1", None, True, 10**400, float("nan"), [1]])
widths = st.sampled_from([0.0625, 0.125, 0, -1, 17, 1e9, 1e308, float("nan"), float("inf"), "0.1", None])
network_configs = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "architecture": st.one_of(st.just("compact-unet"), scalars),
            "in_channels": counts,
            "num_classes": counts,
            "width": widths,
            "dropout": st.sampled_from([0.0, 0.5, 1.0, -0.1, float("nan"), "x", None]),
        },
    ),
)
model_jsons = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {
            "networks": st.one_of(
                json_values,
                st.dictionaries(st.sampled_from(["net", "x"]), network_configs),
                st.just({"net": {"width": 0.0625}}),  # the weights' own network: loading goes on
            )
        },
        optional={"inference_networks": json_values, "name": json_values, "metrics": json_values,
                  "training": json_values, "classes": json_values},
    ),
)  # fmt: skip


@examples(60)
@example(content=json.dumps({"networks": {"net": {"width": 0.0625}}, "inference_networks": 5}))
@given(content=st.one_of(model_jsons.map(dumps), st.text(max_size=40)))
def test_any_model_json_gives_a_model_or_a_model_error(content, model_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("case") / "m"
    folder.mkdir()
    (folder / "weights.pt").write_bytes((model_folder / "weights.pt").read_bytes())
    (folder / "model.json").write_bytes(content.encode("utf-8", errors="surrogatepass"))
    try:
        model = load_model(folder)
    except ModelError as err:
        assert str(err) and "\n" not in str(err)
    else:
        assert list(model.networks) and all(not net.training for net in model.networks.values())


def test_a_model_json_whose_metrics_are_not_an_object_is_still_listed(model_folder, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps({"networks": {"net": {}}, "metrics": True}))
    assert [m["name"] for m in list_models(tmp_path, include_shipped=False)] == ["m"]


# ------------------------------------------------------------------------------------------ progress lines

events = st.fixed_dictionaries(
    {"event": st.one_of(st.text(max_size=10), scalars)},
    optional={"protocol": st.one_of(st.just(1), scalars, json_values), "step": scalars, "loss": json_values},
)
lines = st.one_of(events.map(dumps), json_values.map(dumps), st.text(max_size=60))


@examples(80)
@given(chunks=st.lists(lines, max_size=5), cut=st.integers(0, 200))
def test_any_progress_stream_gives_events_noise_or_a_protocol_error(chunks, cut):
    parser = ProtocolParser()
    stream = "\n".join(chunks)
    try:
        events = parser.feed(stream[:cut]) + parser.feed(stream[cut:]) + parser.close()  # split anywhere
    except ProtocolError as err:
        assert "protocol" in str(err)
        return
    assert all(isinstance(e, dict) and isinstance(e["event"], str) for e in events)


@examples(80)
@given(line=st.one_of(lines, st.binary(max_size=30)))
def test_any_single_line_gives_an_event_none_or_a_named_error(line):
    try:
        event = parse_line(line)
    except ProtocolError as err:
        assert "protocol" in str(err)
        return
    assert event is None or (isinstance(event, dict) and isinstance(event["event"], str))
