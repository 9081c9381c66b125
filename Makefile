# Two commands a newcomer needs: `make report` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?= quick
SEED ?= 0
PYTEST_ARGS ?=

.PHONY: install report test data clean-venv

install: $(VENV)/.installed

# The stamp is rebuilt whenever pyproject.toml changes, so a new dependency is picked up.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[notebooks,fast,dev]'
	# A kernel named "receiptlib" for JupyterLab; papermill finds it too.
	$(PY) -m ipykernel install --sys-prefix --name receiptlib --display-name "Python (receiptlib)" >/dev/null
	touch $@

# The whole report on the default synthetic data: generate data, execute notebooks/NN_*.ipynb in order.
report: install
	$(PY) -m receiptlib report --preset $(PRESET) --seed $(SEED)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

data: install
	$(PY) -m receiptlib synth --preset $(PRESET) --seed $(SEED)

clean-venv:
	rm -rf $(VENV)
