"""The ``>>>`` examples in the package's docstrings run and give what they show (they are documentation a reader
copies, so a stale one is a bug)."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import mst


def test_every_docstring_example_runs():
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    examples, failed = 0, []
    for info in pkgutil.walk_packages(mst.__path__, "mst."):
        if info.name == "mst.__main__":
            continue
        module = importlib.import_module(info.name)
        for test in finder.find(module, module=module):
            result = runner.run(test, out=lambda s: None)
            examples += result.attempted
            if result.failed:
                failed.append(test.name)
    assert not failed, f"docstring examples that fail: {failed}"
    assert examples >= 5  # the grid report, ftsearch, ... (a walk that found nothing would pass vacuously)
