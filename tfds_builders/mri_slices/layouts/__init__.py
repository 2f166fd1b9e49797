"""Layout plug-ins: one module per folder layout of 2D images (`adni`, `folders`, `oasis`,
`parquet`), the interface every layout implements (`base.LayoutPlugin`), the helpers they share
(`base`, `classes`, `class_folders`) and the registry that lists them (`registry`). The volume
layouts (`caps`, `oasis1`, `nifti`) live in `..volumes` beside the code that slices them, and
are registered by the package's `api`.
"""
