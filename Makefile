# twisted_ws4redis developer commands. Everything runs inside $(VENV), created on demand.
PYTHON ?= python3
VENV ?= .venv
PORT ?= 8000
REDIS_URL ?= embedded
PYTEST_ARGS ?=

BIN := $(VENV)/bin
EXAMPLE := examples/chatserver
STAMP := $(VENV)/.installed

.PHONY: test matrix docs demo install clean bench bench-workers bench-cluster system-packages lint

# The editable install uses "compat" mode: with the default mode, twistd cannot
# see the plugin in twisted/plugins/ of a flat layout. The last line refreshes
# Twisted's plugin cache so that `twistd --help` lists ws4redis at once.
$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("Python >= 3.11 is needed, this is " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --config-settings editable_mode=compat -e '.[test,testing,embedded]'
	$(BIN)/python -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'
	touch $(STAMP)

install: $(STAMP)

# Programs pip cannot bring (redis-server, Chromium, HAProxy): installed when
# this runs as root on Debian, else named with the command that installs them.
system-packages:
	tests/system_packages.sh

test: system-packages $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Code quality gates (config in pyproject.toml): ruff's rules and format, mypy
# with the Django (test project settings) and zope.interface plugins.
LINT_TOOLS := ruff==0.17.6 mypy==2.4.1 django-stubs==6.1.2 mypy-zope==1.0.17
lint: $(STAMP)
	$(BIN)/python -m pip install --quiet $(LINT_TOOLS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The supported Python x Django combinations (noxfile.py), each in its own
# virtualenv under .nox/: `make matrix MATRIX_ARGS='-s "tests(3.12-django6.0)" -- -x tests/test_v2.py'`.
MATRIX_ARGS ?=
matrix: system-packages $(STAMP)
	$(BIN)/python -m pip install --quiet nox==2026.10.20
	$(BIN)/nox $(MATRIX_ARGS)

demo: $(STAMP)
	cd $(EXAMPLE) && ../../$(BIN)/python manage.py migrate --noinput
	cd $(EXAMPLE) && ../../$(BIN)/python manage.py loaddata demo_users
	cd $(EXAMPLE) && ../../$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	cd $(EXAMPLE) && ../../$(BIN)/twistd --nodaemon --pidfile= ws4redis \
		--settings=chatserver.settings --endpoint=tcp:$(PORT):interface=127.0.0.1 \
		--redis=$(REDIS_URL) --static

# Load tests (bench/README.md): a fresh server per run, medians into bench/results.md.
BENCH_ARGS ?= --sizes 1000,5000,19500 --runs 3
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet uvloop
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# --workers 2 against one process (bench/README.md), medians into bench/workers-results.md.
BENCH_WORKERS_ARGS ?= --sizes 5000,full --runs 3
bench-workers: $(STAMP)
	$(BIN)/python -m pip install --quiet uvloop
	$(BIN)/python bench/workers.py $(BENCH_WORKERS_ARGS)

# One Redis against a 3-master Redis Cluster (bench/README.md), medians into bench/cluster-results.md.
BENCH_CLUSTER_ARGS ?= --runs 3
bench-cluster: $(STAMP)
	$(BIN)/python -m pip install --quiet uvloop
	$(BIN)/python bench/cluster.py $(BENCH_CLUSTER_ARGS)

# The documentation (docs/), HTML into docs/_build/html; a warning fails the build.
# Sphinx comes from docs/requirements.txt; the diagrams need Graphviz' dot.
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): docs/requirements.txt $(STAMP)
	$(BIN)/python -m pip install --quiet -r docs/requirements.txt
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	tests/system_packages.sh dot:graphviz
	$(BIN)/python -m sphinx -E -W --keep-going -n -q -b html docs docs/_build/html

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .nox docs/_build .mypy_cache .ruff_cache
