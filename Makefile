# The two commands of the README: `make bench` (the main job) and `make test`.
# Each builds .venv from requirements.lock first, so a fresh machine with
# Python 3.11 needs nothing else.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-from-lock

.PHONY: install test bench bench-deploy bench-gpu lint lock

install: $(STAMP)

$(STAMP): requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --requirement requirements.lock
	touch $@

# The benchmarks run here once each, untimed, on a small U-Net: the whole
# pipeline (workers, runners, parity gate, compile) is exercised in CI's time.
# (Width 8, not 4: at width 4 and 32 px one ReLU input within rounding of 0
# moves torch-compile's whole gradient by 2e-4 against eager's, past the gate.)
test: $(STAMP)
	$(BIN)/python -m pytest --benchmark-disable --width 8 --depth 2 --sizes 32 --batches 2 --precisions fp32 \
		--image-size 96 --durations 30
	# bf16 training through the gate on every path that enters a verdict
	$(BIN)/python -m pytest --benchmark-disable --width 8 --depth 2 --sizes 32 --batches 2 --precisions bf16 \
		--tasks train bench/test_unet.py::test_unet

bench: $(STAMP)
	$(BIN)/python -m pytest --benchmark-only

# Inference where users deploy: the frameworks beside the inference runtimes (README: "Deployment
# runtimes"). On a GPU: DEPLOY_PATHS=torch-eager,torch-compile,jax,onnxruntime,torch-aoti,tensorrt
DEPLOY_PATHS ?= torch-eager,torch-compile,jax,onnxruntime,openvino,torch-aoti
bench-deploy: $(STAMP)
	$(BIN)/python -m pytest --benchmark-only --tasks=infer --paths=$(DEPLOY_PATHS)

# The groups GPU users ask about first, in one run folder within minutes: train and infer in bf16,
# then infer in fp32 (a second session of the same run: --resume), 512 px. A lent GPU machine has
# its own torch and jax and no network to build .venv with: this uses the first interpreter whose
# torch and jax import (.venv's, else the machine's). The variables are there for a test on a CPU.
GPU_PYTHON ?= $(firstword $(foreach p,$(BIN)/python python3 python,$(shell $(p) -c "import torch, jax" 2>/dev/null && echo $(p))))
GPU_DEVICE ?= cuda
GPU_PATHS ?= torch-eager,torch-compile,jax
GPU_MATRIX ?= --sizes 512 --batches 8
GPU_RESULTS ?= results
GPU_RUN = $(GPU_PYTHON) -m pytest --benchmark-only bench/test_unet.py::test_unet --device $(GPU_DEVICE) \
	--paths $(GPU_PATHS) --replicates 2 --group-budget 30 --results-dir $(GPU_RESULTS) $(GPU_MATRIX)
bench-gpu:
	@test -n "$(GPU_PYTHON)" || { echo "make bench-gpu: no python here imports torch and jax; make install first"; exit 2; }
	@before="$$(ls -d $(GPU_RESULTS)/*/ 2>/dev/null)"; \
	$(GPU_RUN) --precisions bf16 --tasks train,infer --max-minutes 4; first=$$?; \
	run="$$(ls -d $(GPU_RESULTS)/*/ 2>/dev/null | grep -vxF "$$before" | head -n 1)"; \
	test -n "$$run" || { echo "make bench-gpu: the bf16 session left no run folder"; exit 1; }; \
	$(GPU_RUN) --precisions fp32 --tasks infer --max-minutes 1 --resume "$$run"; second=$$?; \
	echo "make bench-gpu: the run is $$run"; exit $$(( first > second ? first : second ))

lint: $(STAMP)
	$(BIN)/ruff check .

# Re-pin after changing pyproject.toml's dependencies: install them into a
# scratch venv and freeze it. torch's local "+cpu" tag is dropped so that the
# same pin takes the CUDA wheel on a GPU machine. jax2onnx stays at 0.13.0: its
# releases 0.13.1 to 0.17.1 require orbax-checkpoint < 0.11.37, below the 0.12.8
# that flax brings here (pip would move flax's dependency to install one).
lock:
	rm -rf /tmp/unet-bench-lock && $(PYTHON) -m venv /tmp/unet-bench-lock
	/tmp/unet-bench-lock/bin/pip install --quiet torch==2.13.0 jax==0.10.2 flax optax numpy safetensors \
		ml_dtypes pandas psutil tabulate scipy matplotlib pytest pytest-benchmark ruff \
		onnx onnxruntime onnxscript openvino jax2onnx==0.13.0 monai
	(echo '# Exact versions, made by `make lock`; every result records them.'; \
		/tmp/unet-bench-lock/bin/pip freeze | sed 's/+cpu$$//') > requirements.lock
