"""The leak check itself must notice a leak."""
import leaks


def test_diff_reports_added_and_removed():
    before = {"netns": ["a"], "root links": ["lo"]}
    after = {"netns": ["a", "nlt1ns0"], "root links": []}
    problems = leaks.diff(before, after)
    assert "netns: left behind: nlt1ns0" in problems
    assert any("removed" in p and "lo" in p for p in problems)


def test_no_difference_no_problem():
    snap = {"netns": ["x"], "processes": []}
    assert leaks.diff(snap, snap) == []
