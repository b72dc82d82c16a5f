"""bench/gpu_lib.sh (shared by bench/gpu_check.sh and experiments/gpu_*.sh) and bench/gpu_check.sh --smoke, run
here on the CPU at a tiny size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def bash(script: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f'set -u; . bench/gpu_lib.sh; {script}'], cwd=REPO, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", **env}, timeout=300)


def test_summarise_losses(tmp_path):
    rows = ["step,lr,loss,seconds"] + [f"{s},0.1,{1.0 / s:.3f},{0.5 if s > 10 else 9.0}" for s in range(1, 15)]
    (tmp_path / "losses.csv").write_text("\n".join(rows) + "\n")
    result = bash(f'summarise_losses {tmp_path}/losses.csv arm', PY=sys.executable)
    assert result.stdout.strip() == "arm: 14 steps (to step 14), median 0.5000 s/step after 10, loss 1.000 -> 0.071"
    last = bash(f'summarise_losses {tmp_path}/losses.csv "" 4', PY=sys.executable).stdout.strip()
    assert last == "14 steps (to step 14), median 0.5000 s/step over the last 4, loss 1.000 -> 0.071"


@pytest.mark.slow
def test_render_scenes_renders_skips_and_names_failures(tmp_path):
    result = bash("render_scenes 2 3 48 32 5 6", PY=sys.executable, W=str(tmp_path), PYTHONPATH=str(REPO))
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
    made = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "h5").glob("*.h5")}
    assert sorted(made) == ["5.h5", "6.h5"]
    # a scene already prepared is not made again; a seed that fails is named with its log's tail
    again = bash("render_scenes 2 3 48 32 5 7", PY="false", W=str(tmp_path))
    assert again.stdout.startswith("seed 7 failed") and "seed 5" not in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "h5").glob("*.h5")} == made


def test_card_tag():
    names = ["NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA A100-SXM4-80GB", "NVIDIA GeForce RTX 2080 Ti", ""]
    result = bash("; ".join(f'card_tag "{name}"' for name in names))
    assert result.stdout.split("\n") == ["h100", "h200", "a100", "geforce-rtx-2080-ti", "", ""]


def test_bench_tables_names_missing_and_unfinished_cases(tmp_path):
    done = {"name": "test_op_fwd_bwd[cuda-infer-640x512-ssim]", "stats": {"median": 0.001, "rounds": 10},
            "extra_info": {"op": "ssim", "size": "infer-640x512", "card": "NVIDIA H100 80GB HBM3", "ratio_median": 4.0,
                           "kernel_median_s": 0.001, "reference_median_s": 0.004, "kernel_peak_cuda_bytes": 2 ** 20,
                           "reference_peak_cuda_bytes": 2 ** 23, "peak_ratio": 0.125, "achieved_bytes_per_s": 1.5e12,
                           "dram_bytes_per_s": 3.35e12, "dram_source": "datasheet (H100)", "dram_fraction": 0.45}}
    stopped = {"name": "test_op_fwd_bwd[cuda-infer-640x512-warp_image]", "stats": {"median": 0.1, "rounds": 1},
               "extra_info": {"op": "warp_image", "size": "infer-640x512"}}
    (tmp_path / "ops.json").write_text(json.dumps({"benchmarks": [done, stopped]}))
    result = bash(f"bench_tables {tmp_path}/ops.json {tmp_path}/missing.json", PY=sys.executable).stdout
    assert f"- {tmp_path}/missing.json: no results (FileNotFoundError" in result
    assert "Unfinished (time limit): test_op_fwd_bwd[cuda-infer-640x512-warp_image]" in result
    assert "DRAM bandwidth 3.35 TB/s (datasheet (H100))" in result
    assert "| ssim | infer-640x512 | 1.000 | 4.000 | 4.00 ✓ | 1.00 | 8.00 | 0.125 ✓ | 1.5e+03 | 45 % |" in result


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_table_on_the_cpu(tmp_path):
    """`bench/gpu_check.sh --smoke`: stages 2-4 on the CPU at tiny sizes, their JSON and the tables."""
    # the caller's environment (its caches of compiled kernels: the check then takes seconds, not minutes)
    env = {**os.environ, "PY": sys.executable, "OUT": str(tmp_path / "out"), "BENCH_INFER_WORK": str(tmp_path / "work"),
           "PYTHONPATH": str(REPO)}
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--smoke"], cwd=REPO, capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tag = f"cpu-smoke-{date.today():%Y-%m-%d}"
    out = tmp_path / "out"
    ops = json.loads((out / f"ops-{tag}.json").read_text())["benchmarks"]
    assert sorted(b["extra_info"]["op"] for b in ops) == sorted(
        ["ssim", "warp_image", "warp_correlation", "adaptive_aggregation", "depth_weighted_aggregation",
         "neighbour_correlation", "pointwise_mlp", "spn_propagation"])
    (infer,) = json.loads((out / f"infer-{tag}.json").read_text())["benchmarks"]
    # the reference run really ran without kernels/: every public op, and the pipeline's own import of one
    assert {"kernels.ssim", "kernels.warp_correlation", "kernels.spn_propagate", "pipeline.model.spn.spn_propagate"} \
        <= set(infer["extra_info"]["references"])
    (train,) = json.loads((out / f"train-step-{tag}.json").read_text())["benchmarks"]
    assert train["extra_info"]["batch"] == 2
    tables = (out / f"summary-{tag}.md").read_text()
    for heading in ("### Ops", "### selfmvs infer per view", "PatchmatchNet: PUBLISHED", "### Training step"):
        assert heading in tables
    assert "Unfinished" not in tables and "no results" not in tables
    assert "budget (s): 1 CUDA tests 120" in result.stdout and "failed: none" in result.stdout
