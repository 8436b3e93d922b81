"""ZeroEntropy's document metadata (validated by ``check_metadata``) and its filter language (``compile_filter``).
Standard library only."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from zerank.serving.search.store import MAX_FILTER_DEPTH, MAX_METADATA_BYTES, InvalidRequestError, Metadata

_ATTRIBUTE = re.compile(r"(list:)?[A-Za-z0-9_-]+")



def check_metadata(metadata: Mapping[str, Any] | None) -> Metadata:
    """Validate ZeroEntropy metadata: ``{name: str}`` or ``{"list:name": [str, ...]}``, names of letters, digits,
    ``-`` and ``_``, under ``MAX_METADATA_BYTES`` as compact JSON."""
    metadata = dict(metadata or {})
    for name, value in metadata.items():
        if not isinstance(name, str) or not _ATTRIBUTE.fullmatch(name):
            raise InvalidRequestError(f"Metadata attribute name {name!r} must be letters, digits, '-' and '_' "
                                      "(with a 'list:' prefix for a list of strings).")
        if name.startswith("list:"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InvalidRequestError(f"Metadata attribute {name!r} must be a list of strings.")
        elif not isinstance(value, str):
            raise InvalidRequestError(f"Metadata attribute {name!r} must be a string (name a list of strings "
                                      f"'list:{name}').")
    size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())
    if size >= MAX_METADATA_BYTES:
        raise InvalidRequestError(f"The metadata is {size} bytes of JSON; the limit is {MAX_METADATA_BYTES - 1}.")
    return metadata


_COMPARISONS: dict[str, Callable[[str, str], bool]] = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def compile_filter(metadata_filter: Mapping[str, Any], depth: int = 0) -> Callable[[Metadata], bool]:
    """ZeroEntropy's metadata filter as a predicate on a document's metadata (raises ``InvalidRequestError``).

    ``{"$and": [f, ...]}``, ``{"$or": [f, ...]}``, or ``{attribute: {operator: value, ...}, ...}`` (all must hold).
    A string attribute takes ``$eq $ne $gt $gte $lt $lte`` with a string (compared as strings) and ``$in $nin``
    with a list of strings; a ``list:`` attribute takes only ``$in $nin`` (true when the lists share an element).
    A missing attribute is null: only ``$ne`` and ``$nin`` are true of it. ``$and`` and ``$or`` nest at most
    ``MAX_FILTER_DEPTH`` deep.
    """
    if depth > MAX_FILTER_DEPTH:
        raise InvalidRequestError(f"The filter nests $and/$or deeper than {MAX_FILTER_DEPTH} levels.")
    if not isinstance(metadata_filter, Mapping):
        raise InvalidRequestError(f"A filter must be an object, got {metadata_filter!r}.")
    tests: list[Callable[[Metadata], bool]] = []
    for key, value in metadata_filter.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise InvalidRequestError(f"{key} takes a non-empty list of filters, got {value!r}.")
            parts = [compile_filter(part, depth + 1) for part in value]
            combine = all if key == "$and" else any
            tests.append(lambda m, parts=parts, combine=combine: combine(part(m) for part in parts))
        elif key.startswith("$"):
            raise InvalidRequestError(f"Unknown filter operator {key!r} at the top level: use $and, $or or an "
                                      "attribute name.")
        else:
            tests.append(_attribute_test(key, value))
    return lambda metadata: all(test(metadata) for test in tests)


def _attribute_test(name: str, condition: Any) -> Callable[[Metadata], bool]:
    if not _ATTRIBUTE.fullmatch(name):
        raise InvalidRequestError(f"Filter attribute name {name!r} must be letters, digits, '-' and '_' "
                                  "(with a 'list:' prefix for a list attribute).")
    if not isinstance(condition, Mapping) or not condition:
        raise InvalidRequestError(f"The filter on {name!r} must be an object of operators like {{\"$eq\": \"...\"}}, "
                                  f"got {condition!r}.")
    is_list = name.startswith("list:")
    tests = []
    for operator, operand in condition.items():
        if operator in ("$in", "$nin"):
            if not isinstance(operand, list) or not all(isinstance(v, str) for v in operand):
                raise InvalidRequestError(f"{operator} on {name!r} takes a list of strings, got {operand!r}.")
            wanted = frozenset(operand)
            if is_list:
                test = lambda m, w=wanted: name in m and not w.isdisjoint(m[name])
            else:
                test = lambda m, w=wanted: name in m and m[name] in w
            tests.append(test if operator == "$in" else lambda m, t=test: not t(m))
        elif operator in _COMPARISONS:
            if is_list:
                raise InvalidRequestError(f"List attribute {name!r} takes only $in and $nin, not {operator}.")
            if not isinstance(operand, str):
                raise InvalidRequestError(f"{operator} on {name!r} takes a string, got {operand!r}.")
            compare = _COMPARISONS[operator]
            null = operator == "$ne"
            tests.append(lambda m, o=operand, c=compare, null=null: c(m[name], o) if name in m else null)
        else:
            raise InvalidRequestError(f"Unknown filter operator {operator!r} on {name!r}; use one of "
                                      f"{sorted([*_COMPARISONS, '$in', '$nin'])}.")
    return lambda metadata: all(test(metadata) for test in tests)
