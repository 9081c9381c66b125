#!/usr/bin/env python
"""Section VIII on this machine: images per second per backend, model alone and end to end, beside the
device's ceiling. The same flags as `receiptlib bench`; prints the table and saves a JSON copy.

    python scripts/bench_inference.py                       # random-weight ResNet18, 224 px, batch 16
    python scripts/bench_inference.py --run data/runs/NAME --compile --out bench.json

The machine should be otherwise idle: the load average at the start and end is printed with the table.
"""
import argparse
import sys

from receiptlib.cli import add_bench_arguments, bench_command


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_bench_arguments(parser)
    return bench_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
