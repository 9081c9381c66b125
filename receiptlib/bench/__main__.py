"""``python -m receiptlib.bench --worker SPEC.json``: one benchmark setting in a fresh process (bench's isolation)."""
import sys

from .setting import worker_main

sys.exit(worker_main(sys.argv[1:]))
