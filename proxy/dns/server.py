"""netlab-dns: placeholder entry point until the server lands."""
import sys


def main(argv=None) -> int:
    print("netlab-dns: not built yet", file=sys.stderr)
    return 1
