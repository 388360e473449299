PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TASKS ?=
IMAGES ?=
OUT ?= outputs
TEAM ?= team
CONCURRENCY ?= 32

.PHONY: install install-gpu run submit test lint bench doctor clean

install:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'

# onnxruntime and onnxruntime-gpu must never be installed together.
install-gpu: install
	$(BIN)/pip uninstall -y onnxruntime
	$(BIN)/pip install -q onnxruntime-gpu

run:
	$(BIN)/python -m runner $(if $(TASKS),--tasks $(TASKS),--sample) $(if $(IMAGES),--images $(IMAGES)) --out $(OUT) --concurrency $(CONCURRENCY)

submit:
	$(BIN)/python -m runner submit $(if $(TASKS),--tasks $(TASKS),--sample) $(if $(IMAGES),--images $(IMAGES)) --out $(OUT) --team $(TEAM) $(SUBMIT_FLAGS)

test:
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/ruff check runner tests

bench:
	$(BIN)/python -m bench

doctor:
	$(BIN)/python -m runner doctor

clean:
	rm -rf $(OUT)/imgs $(OUT)/*.jsonl $(OUT)/*.log
