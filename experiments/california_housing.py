"""Train the California Housing MLP (8-64-64-1, ReLU, MSE) with hand-written gradients.

``python -m experiments.california_housing``: features standardised with the training
split's statistics, target in $100,000, seeded 80/20 split. See ``--help`` for the flags.
"""

import sys

from experiments.common import CALIFORNIA_HOUSING, main

if __name__ == "__main__":
    sys.exit(main(CALIFORNIA_HOUSING, __doc__))
