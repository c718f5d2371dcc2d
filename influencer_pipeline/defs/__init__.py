"""The thin Dagster layer: assets, checks, sensors and resources that wire the plain-Python modules."""
