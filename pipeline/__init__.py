"""A staged, cached pipeline for Kaggle-style image classification competitions."""

import time

STARTED = time.time()  # when this process began (`python -m pipeline`): a time budget counts from here, before torch
