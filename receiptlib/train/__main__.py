"""`python -m receiptlib.train ...` and `torchrun --nproc_per_node=K -m receiptlib.train ...`: `receiptlib train`."""
import sys

from ..cli import main_train

sys.exit(main_train(sys.argv[1:]))
