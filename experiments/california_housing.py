"""Train the California Housing MLP (8-64-64-1, ReLU, MSE) with hand-written gradients.

``python -m experiments.california_housing``: features standardised with the training
split's statistics, target in $100,000, seeded 80/20 split. See ``--help`` for the flags.
"""

import sys

from experiments import common, harness

if __name__ == "__main__":
    sys.exit(harness.main(common.experiment("california_housing", __doc__)))
