# The two commands of the README. Each creates or refreshes .venv/ by itself.
PY      := .venv/bin/python
STAMP   := .venv/.installed
CORES   ?= 2

.PHONY: demo test bench lint clean slurm-packages

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	# torch==2.13.0 is pinned inside requirements.txt: one resolver run, so no CUDA build sneaks in.
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e . || $(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	.venv/bin/snakemake --cores $(CORES)

test: $(STAMP) slurm-packages
	$(PY) -m pytest -q

# The daemons of the one-node SLURM cluster that tests/test_slurm.py starts (Debian's slurm-wlm and
# munge). Installed only when missing and when run as root; otherwise that test skips itself.
slurm-packages:
	@if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge; }; \
	else echo "slurm-packages: slurm-wlm/munge missing and not root with apt-get; tests/test_slurm.py will skip"; fi

bench: $(STAMP)
	$(PY) -m pytest bench/ --benchmark-only --benchmark-json=bench/results/latest-cpu.json

lint: $(STAMP)
	.venv/bin/snakemake --lint

clean:
	rm -rf results logs benchmarks .snakemake
