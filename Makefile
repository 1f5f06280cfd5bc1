# ptqdet: one entry point. `make demo` runs the whole workflow on the embedded demo,
# `make test` runs the tests. Both create or refresh .venv first.
#   GPU users:  make PADDLE=paddlepaddle-gpu==2.6.2 demo
PYTHON ?= python3
PADDLE ?= paddlepaddle==2.6.2
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(subst =,-,$(PADDLE))
DATA := dataset/shapes
PYTEST_ARGS ?=
# Two pytest-xdist workers (one per core); tests/conftest.py groups the tests (a file, or the files
# that share a Ray cluster or dataset/coco_mini, on one worker) and orders the groups longest first.
XDIST ?= -n 2 --dist loadgroup --no-loadscope-reorder
# Packages go in with uv (the same versions as pip resolves, faster: CI builds both venvs from
# nothing); pip does it where uv cannot be had or fails. Compiled to bytecode at install, as pip
# does: where PYTHONDONTWRITEBYTECODE is set (CI), every process would otherwise compile Paddle
# anew on import (about 6 s each).
UV := uv==0.13.9
INSTALL = $(1)/bin/python -m uv pip install -q --compile-bytecode --python $(1)/bin/python $(2) \
	|| $(1)/bin/python -m pip install -q $(2)

.PHONY: venv data data-eval lint demo test test-fast clean-outputs images bench throughput coverage coco-mini real-model nncf-venv zoo

venv: $(STAMP)

# Re-installs when requirements.txt (or this Makefile, or PADDLE) changes.
$(STAMP): requirements.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(UV)" || true
	grep -v '^paddlepaddle==' requirements.txt > $(VENV)/requirements.resolved.txt
	$(call INSTALL,$(VENV),"$(PADDLE)" -r $(VENV)/requirements.resolved.txt)
	$(call INSTALL,$(VENV),--no-deps paddledet==2.6.0)
	rm -f $(VENV)/.installed-*
	touch $@

data: venv
	$(PY) -m ptqdet.demo.shapes --out $(DATA)

# What the tests read: the val and calib splits (ptqdet's calibration and evaluation images), not
# the 2,400 training images `make data` adds for tools/train_demo.py and `make zoo`.
data-eval: venv
	$(PY) -m ptqdet.demo.shapes --out $(DATA) --splits val calib

# coco_mini (193 real COCO images, ../shared/coco_mini): 64 calibration / 129 evaluation images,
# disjoint, under dataset/coco_mini (configs/coco_mini/); tests/test_real_model.py runs the same function.
COCO_MINI ?= ../shared/coco_mini
COCO_MINI_OUT := dataset/coco_mini
coco-mini: venv
	$(PY) -m ptqdet.annotations --coco_mini $(COCO_MINI) --out $(COCO_MINI_OUT)

# The real COCO PicoDet-s (NMS inside) from the wheel of paddlelabel-ml==1.0.0 on PyPI, sha256-checked
# (../shared/models/picodet_s_416_coco_lcnet/PROVENANCE.md), into ./picodet_s_416_coco_lcnet
# (where configs/picodet_s_*.yaml and configs/coco_mini/ look). No download when already there.
REAL_MODEL ?= picodet_s_416_coco_lcnet
real-model: venv
	$(PY) -m ptqdet.fetch --out $(REAL_MODEL)

# OpenVINO's own PTQ (NNCF) for the recovery benchmark's peer rows (tools/bench_recovery.py --nncf):
# its own venv, as NNCF needs numpy 2 and Paddle 2.6 numpy < 1.24; the OpenVINO of requirements.txt.
NNCF_VENV := .venv-nncf
NNCF ?= nncf==3.4.0
nncf-venv: $(NNCF_VENV)/.installed
$(NNCF_VENV)/.installed: requirements.txt
	test -x $(NNCF_VENV)/bin/python || $(PYTHON) -m venv $(NNCF_VENV)
	$(NNCF_VENV)/bin/python -m pip install -q "$(UV)" || true
	$(call INSTALL,$(NNCF_VENV),"$(NNCF)" "$$(grep -o '^openvino==[^ ]*' requirements.txt)")
	touch $@

demo: data
	$(PY) tools/run_demo.py

lint: venv
	$(PY) -m ruff check .

test: data-eval lint
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: data-eval lint
	$(PY) -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

# The pictures of docs/analysis.md, from the analysis that `make demo` ran.
images: venv
	$(PY) tools/make_images.py

clean-outputs:
	rm -rf outputs

# Deployment benchmark (docs/deployment.md): FP32 vs INT8 on paddle, openvino, onnxruntime,
# with the mAP of each row. Run it on an idle machine; writes outputs/deploy/benchmark.md
# (`make bench BENCH_THREADS=1`: outputs/deploy/benchmark_1thread.md).
BENCH_THREADS ?= 2
BENCH_OUT = outputs/deploy/benchmark$(if $(filter 1,$(BENCH_THREADS)),_1thread,)
bench: data
	$(PY) tools/bench_latency.py --config_path configs/demo/picodet_s_ptq_deploy.yaml configs/demo/ppyoloe_s_ptq_deploy.yaml --goal_ratio 0.6 0.5 --threads $(BENCH_THREADS) --out $(BENCH_OUT)

# Throughput benchmark (docs/deployment.md): images/s of FP32 (f32, bf16) and INT8 on OpenVINO under
# its THROUGHPUT hint, batch 1/4/8, 2 threads; writes outputs/deploy/throughput.md and docs/results/throughput.md.
throughput: data
	$(PY) tools/bench_throughput.py --config_path configs/demo/ppyoloe_s_ptq_deploy.yaml configs/demo/picodet_s_ptq_deploy.yaml --batches 1 4 8 --threads 2

# Architecture coverage matrix (docs/models.md): every PaddleDetection architecture (random weights,
# tiny widths) through every stage; rewrites docs/results/models.json and docs/models.md.
coverage: data
	$(PY) tools/coverage.py

# Trained zoo (docs/models.md, docs/results/zoo.md): each architecture trained on the demo shapes on
# CPU (one thread, <= 45 min each), exported, quantized with its config recipe and measured beside
# NNCF (if .venv-nncf exists). Resumable and cached in outputs/zoo/; ZOO_ARGS="--archs yolox_nano".
ZOO_ARGS ?=
zoo: data
	$(PY) tools/zoo.py $(ZOO_ARGS)
