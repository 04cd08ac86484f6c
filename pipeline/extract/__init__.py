"""Extract wing: cached features from a prepared corpus. Presets name the slots, the plan turns them into
content-addressed stages with only their missing shards, executors (serial | dask) run the shard
tasks, and the feature run writes shards and locks the completed slots. Imports only `corpus` below it."""
