"""Leaf helpers shared by every mer_pipe package: errors and name registries. Imports nothing heavy."""
