# Everything a fresh machine needs: `make demo` and `make test` create .venv and install on first use.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tightcert-installed

.PHONY: install demo test bench clean test-heavy

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tightcert demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-heavy: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m heavy

bench: $(STAMP)
	$(PY) -m benchmarks.speed

clean:
	rm -rf out build *.egg-info
