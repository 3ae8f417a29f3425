"""A lean call path into OpenDP's Rust library for measurements on i64 vectors.

OpenDP's Python binding marshals every call through generic, type-parsing helpers:
about 250 microseconds per call, against about 17 for the Rust sampler itself on a
small vector (measured on the 2-core bench machine). A DP answer makes one call per
noised primitive, so the binding, not the sampling, was most of the noise stage.

This module calls the same exported functions of the same library on the same
measurement object, so the draw is OpenDP's exact sampler and nothing else: only the
marshalling (a contiguous i64 buffer in, a copied i64 buffer out) is done here. Any
error is handed to OpenDP's own `unwrap`, which raises its usual exception.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from opendp._lib import FfiResult, FfiSlice, lib, unwrap  # internals: opendp is pinned to 0.16.x

_VEC_I64 = b"Vec<i64>"
T = TypeVar("T")


def _function(name: str, argtypes: list[Any]) -> Any:
    """A private handle on an exported function (its own argtypes, so it never races
    with OpenDP's wrappers, which reassign the shared handle's argtypes on every call)."""
    fn = lib[name]
    fn.argtypes = argtypes
    fn.restype = FfiResult
    return fn


class VectorInvoker:
    """Invokes a measurement whose input and output are `Vec<i64>`."""

    def __init__(self) -> None:
        vp = ctypes.c_void_p
        self._as_object = _function("opendp_data__slice_as_object", [ctypes.POINTER(FfiSlice), ctypes.c_char_p])
        self._invoke = _function("opendp_core__measurement_invoke", [vp, vp])
        self._as_slice = _function("opendp_data__object_as_slice", [vp])
        self._slice_free = _function("opendp_data__slice_free", [vp])
        self._object_free = _function("opendp_data__object_free", [vp])

    def __call__(self, measurement: Any, values: np.ndarray) -> np.ndarray:
        """The measurement's release on `values` (a 1-d int64 array), as a new array."""

        def read(view: FfiSlice) -> np.ndarray:
            if view.len == 0:
                return np.zeros(0, dtype=np.int64)
            ints = ctypes.cast(view.ptr, ctypes.POINTER(ctypes.c_int64))
            return np.ctypeslib.as_array(ints, shape=(view.len,)).copy()

        return self._release(measurement, values, read)

    def small(self, measurement: Any, values: list[int]) -> list[int]:
        """`__call__` for a short list of i64 values, without numpy (about 10 us less a
        call: a DP answer's few groups are noised with one call per primitive)."""
        n = len(values)
        buf = (ctypes.c_int64 * n)(*values)

        def read(view: FfiSlice) -> list[int]:
            if view.len == 0:
                return []
            return list(ctypes.cast(view.ptr, ctypes.POINTER(ctypes.c_int64 * view.len)).contents)

        return self._invoke_on(measurement, ctypes.cast(buf, ctypes.c_void_p), n, read)

    def index(self, measurement: Any, values: np.ndarray) -> int:
        """The release of a selection measurement (`Vec<i64>` in, one `usize` out)."""
        return self._release(measurement, values, lambda view: int(
            ctypes.cast(view.ptr, ctypes.POINTER(ctypes.c_size_t)).contents.value))  # fmt: skip

    def _release(self, measurement: Any, values: np.ndarray, read: Callable[[FfiSlice], T]) -> T:
        """Invoke on an i64 vector and `read` the output's data before it is freed."""
        data = np.ascontiguousarray(values, dtype=np.int64)
        return self._invoke_on(measurement, data.ctypes.data_as(ctypes.c_void_p), len(data), read)

    def _invoke_on(self, measurement: Any, ptr: Any, n: int, read: Callable[[FfiSlice], T]) -> T:
        """Invoke on the `n` i64 values at `ptr` (kept alive by the caller) and `read`."""
        arg = FfiSlice(ptr, n)
        meas = ctypes.cast(measurement, ctypes.c_void_p)
        obj_in = self._ok(self._as_object(ctypes.byref(arg), _VEC_I64))
        try:
            obj_out = self._ok(self._invoke(meas, obj_in))
        finally:
            self._free(self._object_free(obj_in))
        try:
            raw = self._ok(self._as_slice(obj_out))
            try:
                return read(ctypes.cast(raw, ctypes.POINTER(FfiSlice)).contents)
            finally:
                self._free(self._slice_free(raw))
        finally:
            self._free(self._object_free(obj_out))

    @staticmethod
    def _ok(result: FfiResult) -> int:
        """The pointer an Ok result carries; OpenDP's exception for an Err."""
        if result.tag == 0:
            return int(result.payload.Ok)
        unwrap(result, ctypes.c_void_p)  # raises OpenDPException with the library's text
        raise RuntimeError("unreachable")  # pragma: no cover

    @staticmethod
    def _free(result: FfiResult) -> None:
        """Check a free call (a failure here is a bug in the library, not the input)."""
        if result.tag != 0:
            unwrap(result, ctypes.c_void_p)


class BindingInvoker:
    """The same interface through OpenDP's own Python binding (slower, always there)."""

    def __call__(self, measurement: Any, values: np.ndarray) -> np.ndarray:
        """The measurement's release on `values`, as an int64 array."""
        return np.asarray(measurement(values), dtype=np.int64)

    def small(self, measurement: Any, values: list[int]) -> list[int]:
        """The measurement's release on a short list of values."""
        return [int(v) for v in measurement(values)]

    def index(self, measurement: Any, values: np.ndarray) -> int:
        """The release of a selection measurement."""
        return int(measurement(values))


def invoker() -> VectorInvoker | BindingInvoker:
    """The lean path when this OpenDP build exports what it needs, else the binding."""
    try:
        return VectorInvoker()
    except AttributeError:  # a build without one of the exported functions
        return BindingInvoker()
