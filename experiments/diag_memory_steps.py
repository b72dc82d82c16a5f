"""Resident memory of an inference process step by step (import torch, numba, model, kernel load,
inputs, source features, forward): where a 640x480 forward's peak RSS comes from.

    PYTHONPATH=. .venv/bin/python experiments/diag_memory_steps.py
"""
import os, sys
def rss():
    d = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS", "VmHWM")): d[line.split(":")[0]] = int(line.split()[1]) / 1024
    return f"rss {d['VmRSS']:.0f} hwm {d['VmHWM']:.0f}"
print("python", rss())
import torch; print("torch", rss())
import numba; print("numba", rss())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); import bench_infer as b
torch.set_num_threads(2)
m = b.make_model(); print("model", rss())
import importlib; importlib.import_module("kernels.warp_correlation.cpu"); importlib.import_module("kernels.adaptive_aggregation.cpu"); print("import cpu kernels", rss())
b.run_once(m, b.make_inputs(24, 32), "full"); print("warmup fwd", rss())
inp = b.make_inputs(480, 640); print("inputs", rss())
src = b.source_features_of(m, inp); print("src feats", rss())
b.run_once(m, inp, "cached", src); print("fwd", rss())
b.run_once(m, inp, "cached", src); print("fwd2", rss())
