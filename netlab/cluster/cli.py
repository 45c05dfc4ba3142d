"""The multi-machine commands of kube-netlab (control up, node join/leave)."""
from __future__ import annotations


def register(sub, lab_opt) -> None:
    """Add this group's subcommands to kube-netlab's parser (sub: argparse subparsers;
    lab_opt(sp) adds --lab). Each subcommand's func takes the parsed args, returns the exit code."""
