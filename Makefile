# flagstream — the two commands a user needs:
#   make demo   the whole product on a local Kafka broker (see README)
#   make test   install everything, start a real broker, run the whole suite, stop the broker
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export KAFKA_PORT ?= 19092
export FLAGSTREAM_BROKER ?= 127.0.0.1:$(KAFKA_PORT)

.PHONY: install system-deps broker-start broker-stop test test-unit lint typecheck faults demo bench clean

# Every folder with Python in it (the package's parts, and the tests).
SOURCES := flagstream features scoring sinks streams simulation evaluation perf demo tests

$(BIN)/flagstream: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/flagstream system-deps

# Debian packages the tests use: kcat (a Kafka client we did not write) and chromium
# (browser tests). Installed only when missing; needs root or sudo.
system-deps:
	@missing=""; command -v kcat >/dev/null || missing="$$missing kcat"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

broker-start:
	bash scripts/kafka.sh start

broker-stop:
	bash scripts/kafka.sh stop

lint: $(BIN)/flagstream
	$(BIN)/ruff check $(SOURCES)

typecheck: $(BIN)/flagstream
	bash scripts/typecheck.sh

# The suite's broker keeps its state apart from the demo's and starts empty when it is not
# running: every test creates topics of its own, and a data directory kept across runs piled
# them up (12,000 partitions after four runs) until the broker ran out of heap mid-suite.
# (A broker already answering on the port, a demo's, is used as it is and left running.)
TEST_KAFKA_DATA := $${FLAGSTREAM_CACHE:-$$HOME/.cache/flagstream}/kafka-test-$(KAFKA_PORT)
test: install lint typecheck
	export KAFKA_DATA_DIR=$(TEST_KAFKA_DATA); \
	bash scripts/kafka.sh status >/dev/null 2>&1 || bash scripts/kafka.sh reset; \
	bash scripts/kafka.sh start
	set -o pipefail; status=0; \
	KAFKA_DATA_DIR=$(TEST_KAFKA_DATA) CI=$${CI:-} $(BIN)/python -m pytest $(PYTEST_ARGS) || status=$$?; \
	KAFKA_DATA_DIR=$(TEST_KAFKA_DATA) bash scripts/kafka.sh stop; \
	if [ $$status -ne 0 ]; then echo "---- broker log tail ----"; tail -40 $(TEST_KAFKA_DATA)/broker.log || true; fi; \
	exit $$status

# The fault suite's long variants: bigger streams, every fault, accounting printed.
faults: install
	bash scripts/kafka.sh start
	set -o pipefail; status=0; \
	FAULTS_LONG=1 $(BIN)/python -m pytest -s -m integration tests/test_faults.py \
	  tests/test_cluster_faults.py tests/test_shutdown.py $(PYTEST_ARGS) || status=$$?; \
	bash scripts/kafka.sh stop; bash scripts/kafka.sh cluster stop || true; \
	exit $$status

test-unit: $(BIN)/flagstream
	$(BIN)/python -m pytest -m "not integration and not browser" $(PYTEST_ARGS)

demo: install
	bash scripts/kafka.sh start
	$(BIN)/flagstream demo

# Every contender (the stream ones: the worker, the worker with Faust's consumer thread, the naive
# agent, the plain loop; then the scoring API in front of one worker, of two, and with the
# load shared by API calls and stream records; the same three with the API served by the
# workers themselves, FLAGSTREAM_WORKER_API): about 14 minutes on 2 cores.
BENCH_CONTENDERS := flagstream,flagstream_threaded,naive_faust,aiokafka_ceiling,api,api_2w,api_mixed,api_worker,api_worker_2w,api_worker_mixed
bench: install
	bash scripts/kafka.sh start
	$(BIN)/python -m flagstream.perf compare --contenders $(BENCH_CONTENDERS) --events 50000 \
	  --rates 1000,5000 --api-rates 500,1000,2000 --rate-seconds 10

clean:
	rm -rf $(VENV) var artifacts *.egg-info build
