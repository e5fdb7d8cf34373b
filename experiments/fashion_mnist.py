"""Train on Fashion-MNIST with hand-written gradients: ``python -m experiments.fashion_mnist [--model cnn]``.

``--model mlp`` (default): 784-256-128-10 with ReLU, 15 epochs, batch 128, SGD momentum 0.9,
learning rate 0.05 on a cosine, gradient clipped to global norm 5. ``--model cnn``: a random
horizontal flip of each training image, two convolution blocks with batch norm and max pooling,
then dropout before the output layer (see ``experiments.common.cnn``); 30 epochs, learning rate
0.1, weight decay 5e-4: 93.01% test accuracy. ``--help`` lists the flags.
"""

import sys

from experiments import common, harness

if __name__ == "__main__":
    sys.exit(harness.main(common.experiment("fashion_mnist", __doc__)))
