"""Importing this module registers every model. Add one name per new model file."""
import importlib

for _mod in ("baselines", "ts_gcl", "ar_iigcn", "jv_icl", "deepmsi"):
    importlib.import_module(f"{__package__}.{_mod}")
