"""bench/gpu_lib.sh (shared by bench/gpu_check.sh and experiments/gpu_*.sh), run here on the CPU at a tiny size."""

from __future__ import annotations

import subprocess
import sys
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
