"""The ``slow`` marker: tests too costly for every CI run (e.g. ResNet-50 at 224x224 on a CPU).

They are skipped unless selected with ``-m slow`` (``pytest -m slow tests/benchmark``).
"""

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: costly end-to-end test; run with `pytest -m slow`")


def pytest_collection_modifyitems(config, items):
    if "slow" in (config.getoption("markexpr", "") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with `pytest -m slow tests/benchmark`")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)
