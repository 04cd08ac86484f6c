"""Experiments wing: many runs and what they say together. Sweeps (spec, tasks, claims, driver, report,
cross-validated selection), the runs table, `runs compare`, the cross-run figure and the reference scores a
run is read against. Imports `train` (one run), `corpus` and `executors` below it; `train` never imports it."""
