"""Run Eclipse Paho's MQTT 5.0 interoperability scenarios against a running broker.

paho-mqtt's source distribution on PyPI ships them as ``tests/test_mqttv5.py`` (a port
of ``interoperability/client_test5.py`` of eclipse/paho.mqtt.testing, whose own test
broker it starts).  This driver, run as ``python mqtt_paho_interop.py SUITE_DIR PORT``,
points the suite's ``Test`` class at the broker on ``127.0.0.1:PORT`` instead and
prints one JSON object, test name -> ``ok`` / ``fail`` / ``error`` / ``skipped``, as its
last line.  The suite's other classes test paho's own reconnecting client against
broker reboots, not the broker, and are not run.
"""

from __future__ import annotations

import json
import sys
import types
import unittest
from typing import Any


class _Result(unittest.TestResult):
    """Records each test's outcome by its name; a test that never ran has none."""

    def __init__(self) -> None:
        super().__init__()
        self.outcome: dict[str, str] = {}

    @staticmethod
    def _name(test: Any) -> str:
        return str(test.id().rsplit(".", 1)[-1])

    def addSuccess(self, test: Any) -> None:
        super().addSuccess(test)
        self.outcome[self._name(test)] = "ok"

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self.outcome[self._name(test)] = "fail"

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)
        self.outcome[self._name(test)] = "error"

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)
        self.outcome[self._name(test)] = "skipped"


def main() -> None:
    suite_dir, broker_port = sys.argv[1], int(sys.argv[2])
    sys.path.insert(0, suite_dir)
    # The suite imports its own broker's package only to start it: a stand-in will do.
    for name in ("mqtt", "mqtt.brokers"):
        sys.modules.setdefault(name, types.ModuleType(name))
    import test_mqttv5 as suite  # type: ignore[import-not-found]

    def start_broker(cls: Any, port: int) -> None:
        cls._test_broker_port = broker_port  # already running: ours

    def stop_broker(cls: Any) -> None:
        pass

    suite._TestBase._start_broker = classmethod(start_broker)
    suite._TestBase.tearDownClass = classmethod(stop_broker)
    tests = unittest.defaultTestLoader.loadTestsFromTestCase(suite.Test)
    result = _Result()
    tests.run(result)
    for kind, problems in (("fail", result.failures), ("error", result.errors)):
        for test, trace in problems:
            print(f"{kind}: {test.id()}\n{trace}", file=sys.stderr)
    print(json.dumps(result.outcome, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
