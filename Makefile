# Two commands on a fresh machine: `make demo` and `make test` (each installs into .venv first if needed).
VENV ?= .venv
STAMP := $(VENV)/.bsnn-installed

.PHONY: demo test test-all install peer bench clean

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bsnn demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

peer: $(STAMP)
	bash scripts/install_peer.sh $(VENV)

test-all: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) bsnn-demo .pytest_cache
