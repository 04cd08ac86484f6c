"""Train wing: cached tensors to one run directory. Data (corpus + locked features -> dialogue batches),
run config, the one training loop, protocols (folds and selection), metrics, progress (bar and TensorBoard),
the run directory (report, plots, runcheck) and re-evaluation. Imports `corpus` and `executors` below it;
never media or extractor code, never `experiments` (sweeps, run tables and comparisons live there)."""
