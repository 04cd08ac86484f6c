"""Reading feature pickles from the internet without running their code, and writing ones old NumPy can read.

`pickle.load` calls whatever a file names (`os.system` included). `load_pickle` uses an Unpickler whose
`find_class` hands out only builtin containers, numpy arrays/dtypes/scalars and the numpy functions that
rebuild them; any other global stops the load with a ManifestError naming the file and the global.
Python 2 files (the DialogueRNN / MMGCN pickles) are read with encoding="latin1", as their loaders do.

`dump_pickle` writes arrays through `numpy.frombuffer` + `numpy.reshape` (names every NumPy version has)
instead of NumPy 2's `numpy._core.multiarray._reconstruct`, which NumPy 1.x cannot import: the ERC repos
that read our exports run on NumPy 1.x.
"""
from __future__ import annotations

import _compat_pickle
import importlib
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from mer_pipe.common.errors import ManifestError
from mer_pipe.common.files import atomic_path, sha256_file

_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "bytearray", "bytes", "complex")
# (module, name) -> where to find it: a numpy submodule tried as numpy._core.X then numpy.core.X
_NUMPY_CORE = {
    ("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"),
}


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What Python 3 protocol-2 pickles of `bytes` call (`_codecs.encode(text, 'latin1')`), and nothing else."""
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode with codec {encoding!r} is not allowed (only latin1)")
    return text.encode("latin1")


def _numpy_core(sub: str, name: str) -> Any:
    for mod in (f"numpy._core.{sub}", f"numpy.core.{sub}"):  # NumPy 2 name first: no deprecation warning
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"this NumPy has no {sub}.{name}")


def allowed_global(module: str, name: str) -> Callable[[], Any] | None:
    """A getter for an allowed global, or None. Module names may be Python 2 ones (`__builtin__`)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    if module == "builtins" and name in _BUILTINS:
        return lambda: getattr(__import__("builtins"), name)
    if module == "collections" and name in ("OrderedDict", "defaultdict"):
        return lambda: getattr(__import__("collections"), name)
    if module == "_codecs" and name == "encode":
        return lambda: _latin1_encode
    if module == "numpy" and name in ("ndarray", "dtype", "frombuffer", "reshape"):
        return lambda: getattr(np, name)
    for prefix in ("numpy.core.", "numpy._core."):
        if module.startswith(prefix) and (module[len(prefix):], name) in _NUMPY_CORE:
            return lambda: _numpy_core(module[len(prefix):], name)
    return None


class SafeUnpickler(pickle.Unpickler):
    """Refuses every global outside `allowed_global`; `source` names the file in messages."""

    def __init__(self, fh: Any, source: str) -> None:
        super().__init__(fh, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        getter = allowed_global(module, name)
        if getter is None:
            raise ManifestError(
                f"{self.source}: refused to load: the pickle asks for {module}.{name}, and a feature file needs "
                "only containers, numbers, strings and numpy arrays (a pickle can run code when loaded); "
                "get the file from its original source or convert it with code you trust"
            )
        return getter()

    def persistent_load(self, pid: Any) -> Any:
        raise ManifestError(f"{self.source}: refused to load: persistent id {pid!r} (not a plain feature file)")


def load_pickle(path: str | os.PathLike[str]) -> tuple[Any, str]:
    """(object, sha256 of the file) from a pickle read with SafeUnpickler. Unreadable -> ManifestError."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"--root {path} is not a file; give the feature pickle (e.g. IEMOCAP_features.pkl)")
    try:
        digest = sha256_file(path)
        with open(path, "rb") as fh:
            obj = SafeUnpickler(fh, str(path)).load()
    except ManifestError:
        raise
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror or exc}; check the path and permissions") from None
    except MemoryError:
        raise ManifestError(f"{path} does not fit in memory; import it on a machine with more RAM") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged or foreign file
        why = f"{type(exc).__name__}: {exc}".strip().rstrip(":").replace("\n", " ")[:160]
        raise ManifestError(f"{path} is not a readable pickle ({why}); the file is truncated or not a feature "
                            "pickle: download it again") from None
    return obj, digest


class _Flat:
    """The raw bytes of an array, pickled as numpy.frombuffer(bytearray, dtype-string)."""

    __slots__ = ("arr",)

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr


class CompatPickler(pickle.Pickler):
    """ndarray -> numpy.reshape(numpy.frombuffer(bytearray(data), '<f4'), shape): loadable by NumPy 1.x and 2.x
    (and writable once loaded, since the buffer is a bytearray)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, _Flat):
            return np.frombuffer, (bytearray(obj.arr.tobytes()), obj.arr.dtype.str)
        if type(obj) is np.ndarray:
            if obj.dtype.kind not in "biuf":
                raise TypeError(f"dump_pickle writes numeric arrays only, got dtype {obj.dtype}")
            arr = np.ascontiguousarray(obj)
            return np.reshape, (_Flat(arr.reshape(-1)), tuple(int(s) for s in arr.shape))
        if isinstance(obj, np.generic):
            raise TypeError(f"dump_pickle: numpy scalar {obj!r}; convert it with .item() first")
        return NotImplemented


def dump_pickle(obj: Any, path: str | os.PathLike[str], protocol: int = 4) -> Path:
    """Write `obj` atomically with CompatPickler (protocol 4: every Python 3 the ERC repos use reads it)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        CompatPickler(fh, protocol=protocol).dump(obj)
    return path
