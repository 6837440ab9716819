# Two entry points for a fresh machine (see README):
#   make run   - install the service extras and start scanqc serve on embedded defaults (127.0.0.1)
#   make test  - install everything (dev extras, headless Chromium, a throwaway PostgreSQL) and run the tests
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export BENTOML_DO_NOT_TRACK := true
export ORT_DISABLE_TELEMETRY := 1

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.13.0 first: it resolves to the local CPU wheel; any other spec pulls GBs of CUDA packages.
.PHONY: install-serve install-dev chromium dicom-clients run test lint
install-serve: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[serve]"

install-dev: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"

# Browser tests drive Debian's Chromium (no browser downloads).
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Real DICOM peers for the interoperability tests and `scanqc bench --dicom`: dcmtk's storescu and Orthanc
# (Debian packages; the tests skip, saying why, where they are missing and apt-get is not available).
dicom-clients:
	@{ command -v storescu >/dev/null 2>&1 && command -v Orthanc >/dev/null 2>&1; } || \
	  { command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dcmtk orthanc >/dev/null; } || \
	  echo "dicom-clients: apt-get unavailable; storescu/Orthanc tests will be skipped"

run: install-serve
	$(BIN)/scanqc serve

# The store tests also run on PostgreSQL when scripts/test-postgres.sh can start a throwaway server.
test: install-dev chromium dicom-clients
	SCANQC_TEST_PG_URL="$${SCANQC_TEST_PG_URL:-$$(scripts/test-postgres.sh)}" $(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check .
