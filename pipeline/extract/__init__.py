"""Extract wing: cached features from a prepared corpus. Presets name the slots, the plan (plan.py; types in
stages.py) turns them into content-addressed stages with only their missing shards, the feature run (run.py)
takes the run locks, writes the specs, trains the fine-tunes it needs (finetune*.py), has the executors
(serial | dask, pipeline/executors.py) run the shard tasks (shardrun.py), assembles cross-fitted sets
(crossfit.py), and completes and locks the sets through cache/featureset.py. Imports only `corpus` and
`executors` below it."""
