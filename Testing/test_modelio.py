"""metareg.core.modelio: a model file rebuilds its own network, loads by zoo name, and refuses tampering."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import save_tiny_model, tiny_network
from metareg.core.errors import ModelError
from metareg.core.modelio import load_model, save_model, sha256_of

CARD = {"purpose": "test", "grid": {"size": [64, 64], "spacing": None}}


def test_model_round_trip_rebuilds_the_same_network(tmp_path):
    network, path = tiny_network(dim=2, jitter=0.01), tmp_path / "tiny.safetensors"
    save_model(network, path, CARD)
    loaded = load_model(path)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["sha256"] == sha256_of(path)
    assert path.stat().st_mode & 0o044  # readable by others, like any file the user writes
    assert card["architecture"] == network.to_config() and card["architecture"]["family"] == "unet"
    assert card["grid"]["size"] == [64, 64]
    x, y = torch.rand(1, 1, 40, 36), torch.rand(1, 1, 40, 36)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(fixed=y, moving=x), network.eval()(fixed=y, moving=x), rtol=0, atol=0)
    assert load_model(path.with_suffix(".json")).card == loaded.card


def test_model_loads_by_zoo_name_and_rejects_tampering(tmp_path, monkeypatch):
    path = save_tiny_model(tmp_path / "tiny.safetensors", dim=2, card=CARD)
    (tmp_path / "index.json").write_text(json.dumps(
        {"models": [{"name": "tiny-2d", "file": path.name, "sha256": sha256_of(path), "dimension": 2}]}))
    monkeypatch.setenv("METAREG_MODEL_DIR", str(tmp_path))
    assert load_model("tiny-2d").card.purpose == "test"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_model("tiny-2d")
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        load_model("nope")
