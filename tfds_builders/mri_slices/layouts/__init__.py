"""Layout plug-ins: one module per folder layout (`adni`, `folders`, `oasis`, `parquet`, and the
volume layouts `caps`, `oasis1`, `nifti`), the interface they implement (`base.LayoutPlugin`),
the helpers they share (`base`, `classes`, `class_folders`, and the volume layouts' label tables,
`volume_tables`) and the registry that lists them (`registry`)."""
