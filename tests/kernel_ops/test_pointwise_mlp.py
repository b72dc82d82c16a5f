"""kernels.pointwise_mlp: the fused CPU kernel against the matrix-product reference, and its use
by the network's 1x1x1 nets at inference."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.pointwise_mlp import cpu, pointwise_mlp, pointwise_mlp_reference


def make_case(B, C, N, H1=16, H2=8, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(B, C, N), (H1, C), (H1,), (H2, H1), (H2,), (1, H2), (1,)]
    return [torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]


@pytest.mark.parametrize("precision", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 4, 7), (2, 8, cpu.BLOCK), (3, 4, 2 * cpu.BLOCK + 5), (1, 1, 1)])
def test_matches_reference(shape, precision):
    dtype = precision
    inputs = make_case(*shape, dtype=dtype, seed=sum(shape))
    out = pointwise_mlp(*inputs)
    expected = pointwise_mlp_reference(*inputs)
    assert out.shape == (shape[0], shape[2]) and out.dtype == dtype
    scale = float(expected.abs().max()) + 1.0
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out, expected, rtol=0.0, atol=tol * scale)
    # Both ReLUs matter on these random weights: the result differs from the linear network.
    x, w1, b1, w2, b2, w3, b3 = inputs
    linear = (w3 @ (w2 @ (w1 @ x + b1.view(1, -1, 1)) + b2.view(1, -1, 1)) + b3.view(1, -1, 1))[:, 0]
    assert (linear - expected).abs().max() > 1e-3


def test_runs_the_kernel_for_inference_and_the_reference_for_gradients(monkeypatch):
    calls = []
    original = cpu.forward
    monkeypatch.setattr(cpu, "forward", lambda *a: calls.append(1) or original(*a))
    inputs = make_case(2, 4, 33)
    with torch.no_grad():
        pointwise_mlp(*inputs)
    assert calls == [1]
    inputs[1].requires_grad_(True)
    out = pointwise_mlp(*inputs)
    assert calls == [1]  # the gradient path is the reference's
    out.sum().backward()
    assert inputs[1].grad is not None and inputs[1].grad.abs().sum() > 0


def test_bad_inputs_raise_clear_errors():
    x, w1, b1, w2, b2, w3, b3 = make_case(1, 4, 5)
    with pytest.raises(ValueError, match=r"expected x \(B, C, N\)"):
        pointwise_mlp(x[0], w1, b1, w2, b2, w3, b3)
    with pytest.raises(ValueError, match="w1 of shape"):
        pointwise_mlp(x, w1[:, :3], b1, w2, b2, w3, b3)
    with pytest.raises(ValueError, match="w3 of shape"):
        pointwise_mlp(x, w1, b1, w2, b2, torch.ones(2, 8), b3)
    with pytest.raises(TypeError, match="dtype"):
        pointwise_mlp(x.double(), w1, b1, w2, b2, w3, b3)
    with pytest.raises(TypeError, match="torch.Tensor"):
        pointwise_mlp(x, w1.numpy(), b1, w2, b2, w3, b3)


def test_network_nets_use_it_at_inference_with_the_same_result(monkeypatch):
    from pipeline.model.feature import ConvBnReLU3D, PointwiseConv3d
    from pipeline.model.patchmatch import pointwise_in_chunks

    torch.manual_seed(3)
    net = torch.nn.Sequential(ConvBnReLU3D(4, 16), ConvBnReLU3D(16, 8), PointwiseConv3d(8, 1))
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm3d):  # non-trivial running statistics
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    volume = torch.randn(2, 4, 3, 9, 11)
    with torch.no_grad():
        plain = net(volume)[:, 0]
    calls = []
    monkeypatch.setattr(kernels, "pointwise_mlp", lambda *a: calls.append(1) or pointwise_mlp(*a))
    with torch.no_grad():
        fused = pointwise_in_chunks(net, volume)
    assert calls == [1]
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    # Training-mode BatchNorm (batch statistics) must not take the folded path.
    net.train()
    with torch.no_grad():
        pointwise_in_chunks(net, volume)
    assert calls == [1]
