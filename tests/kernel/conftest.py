"""Kernel tests boot Debian's kernel under qemu (harness.py); they skip, saying
why, where qemu or the kernel package cannot be had."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402


def pytest_collection_modifyitems(config, items):
    reason = harness.unavailable_reason()
    for item in items:
        if "tests/kernel/" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"kernel test: {reason}"))


@pytest.fixture(scope="module")
def boot_kernel():
    """run_in_kernel, failing the test with the guest's output when the boot itself breaks."""
    def run(script: str, modules: list[str], timeout: float = 600.0) -> harness.Result:
        try:
            result = harness.run_in_kernel(script, modules, timeout)
        except harness.KernelUnavailable as e:
            pytest.skip(f"kernel test: {e}")
        print(f"kernel test: boot {result.boot_seconds:.1f} s, whole run {result.seconds:.1f} s")
        return result
    return run
