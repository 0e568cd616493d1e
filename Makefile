# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

lint: $(STAMP)
	$(PY) -m ruff check gevwire codecs tests examples benchmarks fuzz
	$(PY) -m mypy gevwire codecs
	MYPYPATH=fuzz $(PY) -m mypy fuzz/fuzzkit fuzz/run.py

# The tests whose servers do I/O run a second time on the io_uring backend ("auto": it
# falls back to epoll, and says so in pytest's header, where the kernel refuses io_uring).
# Every test file that serves sockets runs a second time on io_uring (where the kernel
# allows it; "auto" falls back to epoll elsewhere): servers, examples, real clients.
IO_TESTS = tests/test_server.py tests/test_server_features.py tests/test_hot_path.py \
	tests/test_client.py tests/test_hostile.py tests/test_server_proxy.py \
	tests/test_examples_gev.py tests/test_examples_protocol.py tests/test_workers.py \
	tests/test_codecs_builtin.py tests/test_redis_example.py tests/test_mqtt_broker.py \
	tests/test_websocket_example.py tests/test_protobuf_example.py tests/test_router.py \
	tests/test_harness.py tests/test_cli.py tests/test_demo.py tests/test_haproxy.py \
	tests/test_soak.py tests/test_pipeline.py tests/test_connection.py

test: $(STAMP) lint
	$(PY) -m pytest -q
	GEVWIRE_BACKEND=auto $(PY) -m pytest -q $(IO_TESTS)

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) benchmarks/run_echo.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
