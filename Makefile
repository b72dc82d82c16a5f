# The two commands of the README. Each creates or refreshes .venv/ by itself.
PY      := .venv/bin/python
STAMP   := .venv/.installed
CORES   ?= 2

.PHONY: demo test bench lint clean system-deps-browser slurm-packages

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	# torch==2.13.0 is pinned inside requirements.txt: one resolver run, so no CUDA build sneaks in.
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e . || $(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	.venv/bin/snakemake --cores $(CORES)

test: $(STAMP) system-deps-browser slurm-packages
	$(PY) -m pytest -q --durations=20

# Headless Chromium renders the report's 3-D cloud in tests/test_report.py, which skips without it.
# Installed (Debian's package) only when missing and we are root; apt failing leaves the suite running.
CHROMIUM ?= chromium
system-deps-browser:
	@command -v $(CHROMIUM) >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || \
	  { echo "installing chromium (apt-get) for the report's browser test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 || \
	    echo "apt-get could not install chromium: the report's browser test will skip"; }

# The daemons of the one-node SLURM cluster that tests/test_slurm.py starts (Debian's slurm-wlm and
# munge). Installed only when missing and when run as root; otherwise that test skips itself.
slurm-packages:
	@if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge; } \
		|| echo "slurm-packages: apt-get could not install slurm-wlm/munge; tests/test_slurm.py will skip"; \
	else echo "slurm-packages: slurm-wlm/munge missing and not root with apt-get; tests/test_slurm.py will skip"; fi

bench: $(STAMP)
	# result files are named by what, machine and date (bench/README.md)
	$(PY) -m pytest bench/ --benchmark-only -p no:cacheprovider --benchmark-json=bench/results/bench-cpu-$$(nproc)core-$$(date +%F).json

lint: $(STAMP)
	.venv/bin/snakemake --lint

clean:
	rm -rf results logs benchmarks .snakemake
