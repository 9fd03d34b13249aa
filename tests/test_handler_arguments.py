"""The executor's per-job argument check agrees with ``inspect.Signature.bind``."""

from __future__ import annotations

import inspect
import itertools

import pytest

from pgjobs.worker.executor import _Signature


def plain(a, b=1): ...
def keyword_only(a, *, k, m=2): ...
def any_keyword(a, **extra): ...
def positional_only(a, /, b=1): ...
def optional_positional_only(a=0, /, b=1): ...
def no_arguments(): ...
def star_args(*args, c=3): ...


@pytest.mark.parametrize("fn", [plain, keyword_only, any_keyword, positional_only,
                                optional_positional_only, no_arguments, star_args])
def test_fast_check_matches_bind_for_every_subset_of_names(fn):
    names = ["a", "b", "c", "k", "m", "extra", "zz"]
    signature = _Signature.of(fn)
    assert signature is not None
    for size in range(len(names) + 1):
        for keys in itertools.combinations(names, size):
            args = dict.fromkeys(keys, 0)
            try:
                inspect.signature(fn).bind(**args)
                binds = True
            except TypeError:
                binds = False
            assert signature.accepts(args) == binds, (fn.__name__, keys)
