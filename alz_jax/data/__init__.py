"""Data: the ADNI data set on disk, preprocessing, augmentation and the Grain input pipeline."""
