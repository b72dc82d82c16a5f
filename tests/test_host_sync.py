"""The networks' forward and the training steps never read a device tensor on the host.

On a GPU, ``bool(tensor)``, ``.item()``, ``.tolist()``, ``.cpu()``, ``float(tensor)``,
``torch.nonzero``, boolean-mask indexing and checked solvers wait until the GPU has run everything
queued before them, and so does a blocking host-to-device copy (``torch.tensor(..., device=d)``,
``host.to(d)`` without ``non_blocking``). Without a GPU the same code runs here on CPU tensors under
:class:`HostSyncGuard`, which makes those calls raise on every tensor that would live on the
device: the batch, the parameters, their gradients and everything computed from them. Tensors the
code makes on the host itself (draws from a CPU generator, constants made without a device) may be
read; the CPU-only forms of the kernels (``kernels/*/cpu.py``, ``native.py``) are CPU by
construction and are not checked.

Value checks take their device branch here (:func:`kernels.checks.values_on_host` made to answer
False): ``torch._assert_async``, which is queued on a GPU and runs at once on the CPU.
The same steps under ``torch.cuda.set_sync_debug_mode("error")`` are in
``tests/kernel_ops/test_host_path.py`` (``cuda`` tests).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

import kernels
import kernels.checks
from pipeline.config import AugmentationConfig
from pipeline.losses import SelfSupervisedLoss, get_recipe
from pipeline.losses.cosegmentation import CoSegmentation
from pipeline.losses.feature import FeatureExtractor
from pipeline.model import ModelConfig, build_model
from pipeline.training.step import symmetric_train_step, train_step

KERNELS_DIR = Path(kernels.__file__).resolve().parent
_CPU_ONLY_FILES = ("cpu.py", "native.py", "_bilinear_cpu.py")

_T = torch.Tensor
# Methods that read a tensor's values on the host (or whose output size depends on them).
_READS = {
    _T.__bool__, _T.item, _T.tolist, _T.numpy, _T.cpu, _T.__float__, _T.__int__, _T.__index__,
    _T.__format__, _T.nonzero, torch.nonzero, torch.masked_select, _T.masked_select, torch.unique, _T.unique,
    torch.equal, _T.equal, torch.allclose, _T.allclose, torch.is_nonzero, _T.is_nonzero,
    torch.linalg.solve, torch.linalg.inv, torch.inverse, _T.inverse, torch.linalg.cholesky,
    torch.linalg.solve_ex, torch.linalg.inv_ex,  # check_errors=True syncs; flagged below only then
}
_INDEXING = {_T.__getitem__, _T.__setitem__}


def _has_mask_index(index) -> bool:
    leaves, _ = tree_flatten(index)
    return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in leaves)


class HostSyncGuard(TorchFunctionMode):
    """Raise on every call that would wait for the GPU if the tensor were on one.

    A tensor counts as on the host when the code made it there: from no tensor and without a
    ``device`` argument or with ``device="cpu"`` (a CPU generator's draw, ``torch.arange(n)``, an
    optimizer's step count), or from host tensors only (and not moved with ``.to(...)`` or
    ``.cuda()``). Every other tensor counts as on the device.
    """

    @staticmethod
    def _on_host(tensor: torch.Tensor) -> bool:
        return getattr(tensor, "_made_on_host", False)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__qualname__", getattr(func, "__name__", repr(func)))
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        device_inputs = [t for t in inputs if not self._on_host(t)]
        reads = func in _READS or (func in _INDEXING and len(args) > 1 and _has_mask_index(args[1]))
        if func in (torch.linalg.solve_ex, torch.linalg.inv_ex) and not kwargs.get("check_errors", False):
            reads = False
        moved = func in (_T.to, _T.cuda) and any(
            not isinstance(a, (torch.dtype, bool, torch.memory_format)) for a in (*args[1:], *kwargs.values())
        )
        if reads and device_inputs and not self._from_cpu_only_kernel():
            self._refuse(name, "on a device tensor")
        if self._blocking_upload(func, args, kwargs, moved):
            self._refuse(name, "a blocking host-to-device copy")
        out = func(*args, **kwargs)
        # ``device="cpu"`` written out is the host; ``device=x.device`` (a torch.device) is x's device.
        host = not device_inputs and kwargs.get("device") in (None, "cpu") and not moved
        # An input handed back unchanged (grouping, views of lists) keeps its place; one changed in
        # place (``add_``, ``_foreach_add_``) takes that of the inputs it was computed from.
        in_place = getattr(func, "__name__", "").endswith("_") or moved  # on a GPU ``.to(device)`` is a new tensor
        passed_through = {id(t) for t in inputs}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not (id(t) in passed_through and not in_place):
                try:
                    t._made_on_host = host
                except (AttributeError, RuntimeError):  # some views refuse attributes: count as device
                    pass
        return out

    def _blocking_upload(self, func, args, kwargs, moved: bool) -> bool:
        """A copy from the host to the device that the host waits for (``non_blocking`` not set)."""
        non_blocking = kwargs.get("non_blocking", False) or any(a is True for a in args[1:])
        if func in (torch.tensor, torch.as_tensor):
            return kwargs.get("device") not in (None, "cpu")
        if func is _T.new_tensor:
            return not self._on_host(args[0]) or kwargs.get("device") not in (None, "cpu")
        if func in (_T.to, _T.cuda):
            return moved and self._on_host(args[0]) and not non_blocking
        if func is _T.copy_:
            return not self._on_host(args[0]) and self._on_host(args[1]) and not non_blocking
        return False

    @staticmethod
    def _refuse(name: str, what: str):
        caller = sys._getframe(2)
        raise AssertionError(
            f"{name} {what} at {caller.f_code.co_filename}:{caller.f_lineno}: "
            "on a GPU it waits until the GPU has run everything queued"
        )

    @staticmethod
    def _from_cpu_only_kernel() -> bool:
        frame = sys._getframe(2)
        path = Path(frame.f_code.co_filename).resolve()
        return path.is_relative_to(KERNELS_DIR) and path.name in _CPU_ONLY_FILES


@pytest.fixture
def guard(monkeypatch):
    """The guard, with the value checks on their device branch."""
    monkeypatch.setattr(kernels.checks, "values_on_host", lambda tensor: False)
    return HostSyncGuard()


def test_the_guard_catches_each_kind_of_read(guard):
    """The guard is not blind: each synchronising call raises on a device tensor, not on a host one."""
    device = torch.rand(4, 3)  # made outside the guard: counts as on the device
    calls = {
        "bool": lambda x: bool(x.sum() > 0), "item": lambda x: x.sum().item(), "tolist": lambda x: x.tolist(),
        "cpu": lambda x: x.cpu(), "float": lambda x: float(x[0, 0]), "int": lambda x: int(x[0, 0]),
        "index": lambda x: [1, 2][x.long()[0, 0]], "nonzero": lambda x: torch.nonzero(x),
        "mask": lambda x: x[x > 0.5], "mask_set": lambda x: x.__setitem__(x > 0.5, 0.0),
        "format": lambda x: f"{x[0, 0]:.2f}", "solve": lambda x: torch.linalg.solve(x[:3] + 3 * torch.eye(3), x[:3]),
        "numpy": lambda x: x.numpy(), "if": lambda x: 1 if x.any() else 0,
        "new_tensor": lambda x: x.new_tensor([1.0, 2.0]), "tensor": lambda x: torch.tensor([1.0], device=x.device),
    }
    with guard:
        for name, call in calls.items():
            with pytest.raises(AssertionError, match="waits until the GPU"):
                call(device.clone())
        host = torch.rand(4, 3, generator=torch.Generator().manual_seed(0))
        assert host._made_on_host
        for name, call in calls.items():
            if name != "tensor":
                call(host.clone())  # host tensors may be read
        with pytest.raises(AssertionError, match="blocking host-to-device copy"):
            host.to(device.device)
        with pytest.raises(AssertionError, match="blocking host-to-device copy"):
            device.clone().copy_(host)
        host.to(device.device, non_blocking=True)
        torch.tensor([1.0, 2.0], device="cpu")
        assert not (host + device)._made_on_host and not host.to(device.device, non_blocking=True)._made_on_host
        torch.linalg.solve_ex(device[:3] + 3 * torch.eye(3), device[:3])  # unchecked: no read


def _batch(views=3, height=32, width=40, batch=1, labels=False):
    gen = torch.Generator().manual_seed(0)
    K = torch.tensor([[0.9 * width, 0.0, width / 2], [0.0, 0.9 * width, height / 2], [0.0, 0.0, 1.0]])
    poses = torch.eye(4).repeat(views, 1, 1)
    poses[:, 0, 3] = 0.1 * (torch.arange(views) - (views - 1) / 2)
    out = {
        "images": torch.rand(batch, views, 3, height, width, generator=gen),
        "K": K.expand(batch, views, 3, 3).clone(),
        "cam_from_world": poses.expand(batch, views, 4, 4).clone(),
        "depth_range": torch.tensor([1.0, 5.0]).expand(batch, views, 2).clone(),
        "mask": torch.ones(batch, 1, height, width, dtype=torch.bool),
        "view_masks": torch.ones(batch, views, 1, height, width, dtype=torch.bool),
    }
    if labels:
        label = 1 + 4 * torch.rand(batch, 1, height, width, generator=gen)
        label[..., : height // 2, :] = 0  # half the pixels unlabelled
        out["label"] = label
    return out


def _model(backbone: str):
    torch.manual_seed(0)
    config = ModelConfig() if backbone == "patchmatchnet" else ModelConfig(backbone="cvp", cvp_levels=2)
    return build_model(config)


def _inputs(batch):
    views = batch["images"].shape[1]
    return ([batch["images"][:, v] for v in range(views)], [batch["K"][:, v] for v in range(views)],
            [batch["cam_from_world"][:, v] for v in range(views)], batch["depth_range"][:, 0, 0], batch["depth_range"][:, 0, 1])


@pytest.mark.parametrize("backbone", ["patchmatchnet", "cvp"])
def test_inference_forward_reads_nothing_on_the_host(guard, backbone):
    model = _model(backbone).eval()
    batch = _batch()
    with torch.no_grad():
        expected = model(*_inputs(batch)).depth
        with guard:
            got = model(*_inputs(batch)).depth
    assert torch.equal(got, expected)


def _objective(recipe_name: str):
    if recipe_name == "pseudo_label":
        recipe = get_recipe("unsup_mvsnet", {"photometric": 0, "ssim": 0, "smoothness": 0, "pseudo_label": 1.0})
    else:
        recipe = get_recipe(recipe_name)
    coseg = CoSegmentation("relu2_2", 4, 3) if "cosegmentation" in recipe.weights else None
    features = FeatureExtractor(("relu1_2", "relu2_2")) if "feature" in recipe.weights else None
    return SelfSupervisedLoss(recipe, cosegmentation=coseg, feature_extractor=features)


@pytest.mark.parametrize(
    "recipe_name, backbone",
    [("unsup_mvsnet", "patchmatchnet"), ("mvs2", "patchmatchnet"), ("m3vsnet", "patchmatchnet"),
     ("jdacs", "patchmatchnet"), ("pseudo_label", "patchmatchnet"), ("jdacs_ms", "cvp")],
)
def test_training_step_reads_nothing_on_the_host(guard, recipe_name, backbone):
    """One optimizer step of each recipe (mvs2: the symmetric step) with the guard on."""
    model = _model(backbone).train()
    objective = _objective(recipe_name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batch = _batch(labels=recipe_name == "pseudo_label")
    device = torch.device("cpu")
    before = [p.detach().clone() for p in model.parameters()]
    generator = torch.Generator().manual_seed(0)
    with guard:
        if recipe_name == "mvs2":
            total, values = symmetric_train_step(model, model, objective, optimizer, scaler, batch, generator, None, 1.0, device)
        else:
            total, values = train_step(model, objective, optimizer, scaler, batch, objective.active_terms,
                                       AugmentationConfig(), 0.01, generator, None, 1.0, device)
    assert set(values) == set(objective.active_terms)
    assert torch.isfinite(total)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
