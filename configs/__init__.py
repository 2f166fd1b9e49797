"""Training configs: each module's `get_config()` returns an ml_collections.ConfigDict.

Commands take one by file path or by name (`--config=configs/demo.py` or `--config=demo`, from
any folder once the project is installed); a config derived from another imports it
(`from configs import convnext_t`). Configs import nothing of alz_jax.
"""
