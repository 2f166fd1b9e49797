"""The `adni` TFDS builder: ADNI AD_NC slices with subject-aware splits (manual download)."""

from tfds_builders.adni.adni_dataset_builder import Builder, config_for

__all__ = ["Builder", "config_for"]
