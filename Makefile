# The two commands a new user needs: `make run` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: run test lint format bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,services]'
	touch $(STAMP)

## run: zero-setup daemon on :8080 (private PostgreSQL/Redis unless TRUNKLINE_*__URL are set)
run: $(STAMP)
	$(BIN)/trunkline dev

## test: the whole suite against real PostgreSQL and Redis (private ones unless TRUNKLINE_TEST_*_URL are set)
test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	@for b in bench/http.py bench/pools.py bench/accept.py bench/dispatch.py bench/guardrails.py bench/sse.py bench/originate.py bench/resp.py bench/campaign.py bench/ivr.py; do \
		if [ -f $$b ]; then echo "### $$b"; $(BIN)/python -m bench.$$(basename $$b .py) || exit 1; fi; \
	done

clean:
	rm -rf $(VENV) .trunkline
