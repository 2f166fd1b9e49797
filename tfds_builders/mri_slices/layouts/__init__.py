"""Layout plug-ins: one module per folder layout (`adni`, `folders`, `oasis`, `parquet`), the
interface they implement (`base.LayoutPlugin`), the helpers they share (`base`, `classes`,
`class_folders`) and the registry that lists them (`registry`)."""
