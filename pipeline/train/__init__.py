"""Train wing: cached tensors to a run directory. Data (corpus + locked features -> dialogue batches),
run config, the one training loop, protocols (folds and selection), metrics, the run directory
(report) and re-evaluation. Imports only `corpus` below it; never media or extractor code."""
