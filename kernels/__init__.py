"""selfmvs kernels: the differentiable hot paths of self-supervised PatchMatch MVS.

Each op has a plain-PyTorch reference, a CPU implementation (numba) and a CUDA implementation,
dispatched by device inside one ``torch.autograd.Function``. This package imports torch, never
``pipeline``. (Public functions and their shapes: see the op modules' docstrings, summarised below
as they land.)
"""
