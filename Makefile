# The two commands of the README. Each creates or refreshes .venv/ by itself.
PY      := .venv/bin/python
STAMP   := .venv/.installed
CORES   ?= 2

.PHONY: demo test bench lint clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	# torch==2.13.0 is pinned inside requirements.txt: one resolver run, so no CUDA build sneaks in.
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e . || $(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	.venv/bin/snakemake --cores $(CORES)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	# result files are named by what, machine and date (bench/README.md)
	$(PY) -m pytest bench/ --benchmark-only -p no:cacheprovider --benchmark-json=bench/results/bench-cpu-$$(nproc)core-$$(date +%F).json

lint: $(STAMP)
	.venv/bin/snakemake --lint

clean:
	rm -rf results logs benchmarks .snakemake
