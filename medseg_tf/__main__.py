"""``python -m medseg_tf``: the command line (see :mod:`medseg_tf.cli`)."""

import sys

from medseg_tf.cli import main

if __name__ == "__main__":
    sys.exit(main())
