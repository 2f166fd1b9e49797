"""XLA flags of the test session and of the commands tests start.

LLVM at -O0: XLA:CPU compiles the tiny test models 3-6x faster (compiling is most of the suite's
time); the arithmetic is the same IEEE code, only less optimised machine code. XLA:CPU's older
loop emitters instead of its MLIR fusion emitters: the tiny train step compiles in about half the
CPU time again, with bitwise the same losses (measured on 2026-12-05, docs/testing.md).
"""

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
# A command a test starts as a user would: one CPU device, the session's optimisation level.
ONE_DEVICE_XLA_FLAGS = TEST_XLA_FLAGS
