import os
import sys

import torch

# Benchmarks import bench/common.py as a plain module.
sys.path.insert(0, os.path.dirname(__file__))

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
