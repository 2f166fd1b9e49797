"""TFDS dataset builders of alz_jax (never import alz_jax from here)."""
