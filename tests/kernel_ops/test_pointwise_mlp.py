"""kernels.pointwise_mlp: the native CPU forward and the chunked fallback against the torch reference."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import _native
from kernels.pointwise_mlp import pointwise_mlp_reference

HAVE_COMPILER = _native._compiler() is not None


def make_layers(dims, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(out, inp, generator=gen, dtype=dtype) / inp**0.5 for inp, out in zip(dims, dims[1:])]
    biases = [torch.randn(out, generator=gen, dtype=dtype) * 0.1 for out in dims[1:]]
    return weights, biases


@pytest.fixture
def without_native(monkeypatch):
    """The op as on a machine without a C++ compiler: the reference in chunks."""
    monkeypatch.setattr(_native, "library", lambda: None)


@pytest.mark.parametrize(
    "dims, shape",
    [
        ((4, 16, 8, 1), (2, 4, 3, 5, 7)),  # PatchmatchNet's similarity / feature-weight net
        ((8, 16, 8, 1), (1, 8, 9, 13, 11)),  # N not a multiple of the kernel's 64-position blocks
        ((3, 5), (2, 3, 70)),  # one layer: no ReLU at all
        ((6, 32, 2), (1, 6, 4, 4)),  # two outputs
    ],
)
def test_cpu_inference_equals_the_reference(dims, shape, dtype):
    if not HAVE_COMPILER:
        pytest.skip("no C++ compiler: the native kernels are not built on this machine")
    assert _native.library() is not None, _native.status()  # a machine with a compiler must build them
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    weights, biases = make_layers(dims, dtype)
    with torch.no_grad():
        got = kernels.pointwise_mlp(x, weights, biases)
    expected = pointwise_mlp_reference(x, weights, biases)
    assert got.shape == (shape[0], dims[-1], *shape[2:]) and got.dtype == dtype
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(got, expected, **tolerance)
    # the ReLU matters: a net whose hidden layer is all negative gives the output bias alone
    if len(dims) > 2:
        biases_negative = [b - 100.0 if i == 0 else b for i, b in enumerate(biases)]
        with torch.no_grad():
            flat = kernels.pointwise_mlp(x, weights, biases_negative)
        torch.testing.assert_close(flat, pointwise_mlp_reference(x, weights, biases_negative), **tolerance)


def test_nan_propagates_like_the_reference():
    if not HAVE_COMPILER:
        pytest.skip("no C++ compiler")
    x = torch.randn(1, 4, 10)
    x[0, 2, 3] = float("nan")
    weights, biases = make_layers((4, 16, 1), torch.float32)
    with torch.no_grad():
        got = kernels.pointwise_mlp(x, weights, biases)
    expected = pointwise_mlp_reference(x, weights, biases)
    assert torch.isnan(got[0, 0, 3]) and torch.isnan(expected[0, 0, 3])
    torch.testing.assert_close(got, expected, equal_nan=True)


def test_fallback_in_chunks_equals_one_pass(without_native):
    x = torch.randn(2, 4, 5, 6, 7)
    weights, biases = make_layers((4, 16, 8, 1), torch.float32)
    with torch.no_grad():
        got = kernels.pointwise_mlp(x, weights, biases, chunk=37)
    torch.testing.assert_close(got, pointwise_mlp_reference(x, weights, biases), rtol=1e-6, atol=1e-6)


def test_gradients_come_from_the_reference():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    weights, biases = make_layers((3, 7, 1), torch.float64, seed=4)
    weights = [w.requires_grad_() for w in weights]
    torch.autograd.gradcheck(lambda x, w0, w1: kernels.pointwise_mlp(x, [w0, w1], biases), (x, *weights))


def test_convolution_weights_are_accepted_as_matrices():
    x = torch.randn(1, 4, 3, 3)
    conv = torch.nn.Conv2d(4, 2, 1)
    with torch.no_grad():
        torch.testing.assert_close(kernels.pointwise_mlp(x, [conv.weight], [conv.bias]), conv(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda x, w, b: (x.long(), w, b), TypeError, "float32 or float64"),
        (lambda x, w, b: (x[0, 0], w, b), ValueError, r"expected x \(B, C, ...\)"),
        (lambda x, w, b: (x, w, b[:1]), ValueError, "2 weights but 1 biases"),
        (lambda x, w, b: (x, [w[0][:, :3], w[1]], b), ValueError, "takes 3 channels, its input has 4"),
        (lambda x, w, b: (x, w, [b[0][:2], b[1]]), ValueError, r"expected bias \(16,\)"),
        (lambda x, w, b: (x, [w[0].double(), w[1]], b), TypeError, "layer 0: weight is torch.float64"),
        (lambda x, w, b: (x, [], []), TypeError, "non-empty lists"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, error, message):
    x = torch.randn(1, 4, 6)
    weights, biases = make_layers((4, 16, 1), torch.float32)
    with pytest.raises(error, match=message):
        kernels.pointwise_mlp(*change(x, weights, biases))
