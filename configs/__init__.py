"""Training configs: each module's `get_config()` returns an ml_collections.ConfigDict.

Commands take one by file path or by name (`--config=configs/demo.py` or `--config=demo`, from
any folder once the project is installed). This folder installs as the package alz_jax.configs
(pyproject.toml's package-dir), so a config derived from another imports it as
`from alz_jax.configs import convnext_t`. Configs import nothing else of alz_jax.
"""
