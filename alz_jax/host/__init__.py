"""Host plumbing (the bottom layer): errors, storage, logs, the host environment, the compilation
cache, profiling and the distributed runtime. Imports nothing else of alz_jax."""
