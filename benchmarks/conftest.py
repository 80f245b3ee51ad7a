"""pytest plumbing for the benchmark suites (benchmarks/bench_<op>.py; not run by CI, whose
testpaths are tests/): collects ``bench_*.py`` when the folder is given, puts this folder on
sys.path. Options by environment: HESSALIGN_BENCH_DEVICE=cpu|cuda, HESSALIGN_BENCH_SHAPES=
quick (default) | domainbed (all 16 DomainBed heads), HESSALIGN_BENCH_THREADS=<torch threads>."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_collect_file(parent, file_path):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
