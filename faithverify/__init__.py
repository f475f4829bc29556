"""faithverify: sound verification of teacher/student faithfulness for knowledge distillation."""

import os

# With OpenMP's default (active, spinning) wait policy, torch's CPU threads slow down by 3-8x (CROWN) and up to
# 200x (PGD on small MLPs) as soon as another process holds a core: a waiting thread spins on the core the
# other thread needs. PASSIVE removes that cliff and costs ~5% on bound propagation on an idle machine
# (benchmarks/results/threads.md); the attacks, whose operations are too small to share, run on one thread
# anyway (faithverify.certify). It only takes effect if set before torch is first imported, and a user's own
# setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
