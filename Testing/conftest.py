"""Shared pytest fixtures: small phantom datasets and tiny models, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
LA2018 = REPO.parent / "shared" / "data" / "la2018"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Never touch the user's real ~/.SemiSupSeg from a test."""
    monkeypatch.setenv("SEMISUPSEG_HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory) -> Path:
    """Four labelled + two unlabelled + two test phantom cases of 48^3; returns dataset.json."""
    from SemiSupSegLib.phantom import write_phantom_dataset

    out = tmp_path_factory.mktemp("phantom")
    return write_phantom_dataset(out, cases=4, unlabeled=2, test=2, seed=7, size=48)
