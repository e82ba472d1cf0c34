# keras_seg developer entry points. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Re-install whenever the packaging files change.
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)
DEMO := .demo
PYTEST_ARGS ?=

.PHONY: install test test-slow demo bench bench-quick bench-torch bench-int8 clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[cpu,prep,test]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# The default suite: fast tests only (slow ones are skipped, see test-slow).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup $(PYTEST_ARGS) tests

# Full-size golden tests (parameter counts, shape tables) and other slow tests.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --run_slow -m slow $(PYTEST_ARGS) tests

# Prepare the built-in dataset, train U-Net, evaluate, predict, export (SavedModel + TFLite with a
# parity report) and predict with the int8 TFLite model under LiteRT (2000 training steps: README).
demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/keras-seg prepare shapes --out_dir=$(DEMO)/shapes_raw
	$(BIN)/keras-seg prepare folder --images=$(DEMO)/shapes_raw/images --masks=$(DEMO)/shapes_raw/masks \
		--out_dir=$(DEMO)/shapes_tfrecords --name=shapes --class_names=background,disk,square,triangle
	$(BIN)/keras-seg train --flagfile=configs/unet.cfg --model_dir=$(DEMO)/unet_run
	$(BIN)/keras-seg evaluate --model_dir=$(DEMO)/unet_run --split=val
	$(BIN)/keras-seg predict --model_dir=$(DEMO)/unet_run --out_dir=$(DEMO)/predictions \
		$(DEMO)/shapes_raw/images/val/val_00000.png
	$(BIN)/keras-seg export --model_dir=$(DEMO)/unet_run --out_dir=$(DEMO)/export --version=1
	$(BIN)/keras-seg predict --tflite=$(DEMO)/export/unet_run_v1/unet_run_int8.tflite \
		--out_dir=$(DEMO)/predictions_tflite $(DEMO)/shapes_raw/images/val/val_00000.png
	@echo "Parity of the exported models with Keras ($(DEMO)/export/unet_run_v1/parity.json):"
	@cat $(DEMO)/export/unet_run_v1/parity.txt

# Benchmarks (benchmarks/, run from the repository root; RESULTS.md): every model at 256x256
# (52 min on 2 AVX-512 cores, 100 min on 2 AVX2 cores), the smoke run (under 10 minutes, writes
# benchmarks/RESULTS-quick.md), and PyTorch side by side.
bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick

bench-torch: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench-torch]'
	$(BIN)/python benchmarks/compare_torch.py

# TFLite int8 against fp32, op by op (the int8-ops section of benchmarks/RESULTS.md):
# every model at 256x256, 24 min on 2 shared (loaded) AVX-512 cores.
bench-int8: $(STAMP)
	$(BIN)/python benchmarks/int8_ops.py

clean:
	rm -rf $(VENV) $(DEMO) *.egg-info
