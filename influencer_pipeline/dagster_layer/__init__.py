"""The Dagster layer's helpers that are not definitions: partitions, resources, metadata, error policy, executors.

They live outside `influencer_pipeline/defs/` so that the defs folder holds only definitions, one folder per asset
group, and a group never imports another group's module: the groups depend on these helpers and on asset keys.
"""
