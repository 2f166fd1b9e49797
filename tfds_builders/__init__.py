"""TFDS dataset builders of alz_jax. This folder installs as the package alz_jax.tfds_builders
(pyproject.toml's package-dir); its modules import each other relatively and nothing else of
alz_jax."""
