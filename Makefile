# Every target does its own set-up (scripts/setup.sh is idempotent and fast the second time).
PY := .venv/bin/python
# A second, newer ComfyUI to test against when its source archive lies beside the checkout (CI keeps one
# in ../shared/vendor). scripts/setup.sh verifies and unpacks it into .comfyui-<tag>/ with .venv-<tag>/.
COMFYUI_ARCHIVE ?= $(lastword $(sort $(wildcard ../shared/vendor/comfyui-*.tar.gz)))
ARCHIVE_TAG := $(patsubst comfyui-%.tgz,%,$(patsubst comfyui-%.tar.gz,%,$(notdir $(COMFYUI_ARCHIVE))))
ARCHIVE_VERSION := $(firstword $(subst -, ,$(ARCHIVE_TAG)))

.PHONY: setup test test-fast lint demo bench clean

setup:
	@bash scripts/setup.sh $(if $(COMFYUI_ARCHIVE),--comfyui-archive "$(COMFYUI_ARCHIVE)")

# Each integration run names the other ComfyUI (cross-version LoRA checks in tests/integration/test_server.py).
ifneq ($(COMFYUI_ARCHIVE),)
PINNED_RUN := LEAPALIGN_OTHER_COMFYUI="$(CURDIR)/.comfyui-$(ARCHIVE_TAG)" \
  LEAPALIGN_OTHER_PYTHON="$(CURDIR)/.venv-$(ARCHIVE_TAG)/bin/python"
ARCHIVE_RUN := COMFYUI_PATH="$(CURDIR)/.comfyui-$(ARCHIVE_TAG)" LEAPALIGN_EXPECT_COMFYUI="$(ARCHIVE_VERSION)" \
  LEAPALIGN_OTHER_COMFYUI="$(CURDIR)/.comfyui" LEAPALIGN_OTHER_PYTHON="$(CURDIR)/$(PY)"
endif

# Unit tests once (the browser tests in tests/browser run on both ComfyUI trees: PINNED_RUN names the
# archive's); the integration suite against the pinned ComfyUI, then against the archive's.
test: setup
	$(PINNED_RUN) $(PY) -m pytest -q tests --ignore=tests/integration
	$(PINNED_RUN) $(PY) -m pytest -q tests/integration
ifneq ($(COMFYUI_ARCHIVE),)
	$(ARCHIVE_RUN) .venv-$(ARCHIVE_TAG)/bin/python -m pytest -q tests/integration
endif

test-fast: setup
	$(PY) -m pytest -q tests -m "not slow"

lint: setup
	.venv/bin/ruff check .

demo: setup
	$(PY) -m trainer_cli.demo

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf .venv .comfyui .cache runs .venv-*/ .comfyui-*/
