"""Interop with the published ERC feature pickles (DialogueRNN, MMGCN, COSMIC): import them as prepared
datasets with locked feature sets (`importer`), export ours in their tuple layouts (`exporter`), and never
let a pickle run code (`pickles`). See docs/interop.md."""
from __future__ import annotations

from .exporter import export_dataset
from .importer import import_pickle
from .layouts import LAYOUTS

__all__ = ["LAYOUTS", "export_dataset", "import_pickle"]
