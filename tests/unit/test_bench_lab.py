"""Pure helpers of bench/lab.py: the size argument, how pods spread over nodes, reading
/proc memory fields, naming processes for the memory breakdown, and summing memory."""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import pytest

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "lab.py")
_spec = importlib.util.spec_from_file_location("bench_lab", _PATH)
bench_lab = importlib.util.module_from_spec(_spec)
sys.modules["bench_lab"] = bench_lab   # dataclasses look their module up there
_spec.loader.exec_module(bench_lab)


def test_parse_size_is_nodes_by_pods_in_total():
    assert bench_lab.parse_size("10x1000") == (10, 1000)
    assert bench_lab.parse_size("1X253") == (1, 253)


@pytest.mark.parametrize("text", ["10", "axb", "0x4", "1x254", "2x507"])
def test_parse_size_refuses_what_does_not_fit(text):
    with pytest.raises(argparse.ArgumentTypeError):
        bench_lab.parse_size(text)


def test_spread_places_like_the_scheduler():
    assert bench_lab.spread(10, 1000) == [100] * 10
    assert bench_lab.spread(3, 7) == [3, 2, 2]
    assert bench_lab.spread(2, 0) == [0, 0]


STATUS = """Name:\tpython3
VmPeak:\t  162768 kB
VmRSS:\t   12704 kB
RssAnon:\t    6000 kB
"""
SMAPS_ROLLUP = """55d0c0000000-7ffc00000000 ---p 00000000 00:00 0                          [rollup]
Rss:               12704 kB
Pss:                6100 kB
Pss_Anon:           5000 kB
"""


def test_kb_field_reads_status_and_smaps_rollup():
    assert bench_lab.kb_field(STATUS, "VmRSS") == 12704
    assert bench_lab.kb_field(SMAPS_ROLLUP, "Pss") == 6100
    assert bench_lab.kb_field(SMAPS_ROLLUP, "Pss_Anon") == 5000   # not confused with Pss
    assert bench_lab.kb_field(STATUS, "VmSwap") is None           # a kernel thread has no VmRSS


@pytest.mark.parametrize("argv, kind", [
    (["/work/main/.venv/bin/python3", "-m", "netlab.agent", "--lab", "x"], "netlab.agent"),
    (["/work/main/.venv/bin/python3", "/work/main/.venv/bin/netlab-dns", "serve", "--lab", "x"], "netlab-dns serve"),
    (["/usr/bin/python3", "bench/mininet_run.py", "--hosts", "200"], "mininet_run.py"),
    (["bash", "--norc", "--noediting", "-is", "mininet:h1"], "bash"),
    (["/usr/bin/sleep", "infinity"], "sleep"),
    (["/work/main/.venv/bin/python3 -m netlab.workload.echo --pod web-1 --tcp 8080"], "netlab.workload.echo"),
    (["python3"], "python3"),
    ([], "?"),
])
def test_process_kind_names_interpreters_by_what_they_run(argv, kind):
    assert bench_lab.process_kind(argv) == kind


def test_memory_sums_per_kind_and_subtracts_a_base():
    lab = bench_lab.Memory()
    for kind, rss, pss in [("netlab.agent", 40_000, 30_000), ("netlab.agent", 40_000, 30_000),
                           ("sleep", 2_048, 100), ("netlab.workload.echo", 12_288, 6_144)]:
        lab.add(kind, rss, pss)
    assert (lab.processes, lab.rss_kb, lab.pss_kb) == (4, 94_336, 66_244)
    assert lab.by_kind["netlab.agent"] == [2, 80_000, 60_000]

    base = bench_lab.Memory()
    base.add("netlab.agent", 80_000, 60_000)
    added = lab.minus(base)
    assert (added.processes, added.rss_kb, added.pss_kb) == (3, 14_336, 6_244)
    assert added.by_kind["netlab.agent"][1:] == [0, 0]
    assert added.per(2) == (7.0, 6_244 / 1024 / 2)
    assert lab.top(1).startswith("netlab.agent x2 78/")
