"""pipeline.model.device.resolve_device: the one place that turns a device name into a torch.device."""

from __future__ import annotations

import importlib

import pytest
import torch


def test_names(monkeypatch):
    from pipeline.model.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="'cuda' asked for but CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match=r"expected one of auto, cpu, cuda, got 'gpu'"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="local rank 2 but only 2 GPU"):
        resolve_device("cuda", local_rank=2)


def test_import_does_not_query_cuda(monkeypatch):
    import pipeline.model.device as module

    def refuse():
        raise AssertionError("CUDA queried at import time")

    monkeypatch.setattr(torch.cuda, "is_available", refuse)
    monkeypatch.setattr(torch.cuda, "device_count", refuse)
    importlib.reload(module)
    assert module.resolve_device("cpu") == torch.device("cpu")
