"""alz_jax: JAX/Flax training of ConvNeXt on ADNI AD/NC MRI slices."""
