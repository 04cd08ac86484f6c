"""Interop with the published ERC feature pickles (DialogueRNN, MMGCN, COSMIC): import them as prepared
datasets with locked feature sets (`importer`), export ours in their tuple layouts (`exporter`), and never
let a pickle run code (`pickles`); and the same features as one Parquet file with keys and provenance in its
metadata (`parquet`, `parquet_import`). See docs/interop.md."""
from __future__ import annotations

from .exporter import export_dataset
from .importer import import_pickle
from .layouts import LAYOUTS
from .parquet import export_parquet
from .parquet_import import import_parquet

__all__ = ["LAYOUTS", "export_dataset", "export_parquet", "import_parquet", "import_pickle"]
