"""Text at the server's edges: what a request may hold, what SQLite and UTF-8 can take.

JSON can carry a lone UTF-16 surrogate (``"\\ud800"``) and Python decodes it into
a ``str`` that no UTF-8 encoder, SQLite binding, tokenizer or llama.cpp accepts.
A request holding one is refused with a 400 naming the field
(:func:`find_lone_surrogate`); text from elsewhere (a backend's reply, a
policy) is made storable by replacing each one with U+FFFD (:func:`storable`),
and :func:`json_bytes` can encode anything, so no answer or error ever fails
on its way out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def find_lone_surrogate(value: Any, path: str = "") -> tuple[str, int, str] | None:
    """The first lone surrogate in ``value``'s strings: (dotted path, index, character).

    Dict keys count too (an unknown key still reaches error messages); a pair
    of surrogates never reaches here, JSON decoding joins it into one character.
    """
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        return (path, found.start(), found.group()) if found else None
    if isinstance(value, Mapping):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            # A bad key is reported at its parent: the key itself is not printable.
            hit = find_lone_surrogate(key, path) or find_lone_surrogate(item, where)
            if hit:
                return hit
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        for i, item in enumerate(value):
            hit = find_lone_surrogate(item, f"{path}.{i}" if path else str(i))
            if hit:
                return hit
    return None


def storable(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (valid UTF-8 from here on)."""
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def storable_value(value: Any) -> Any:
    """A row value made storable: strings cleaned, everything else unchanged."""
    return storable(value) if isinstance(value, str) else value


def json_bytes(obj: Any) -> bytes:
    """UTF-8 JSON of ``obj``; a string that UTF-8 cannot encode is sent ``\\u``-escaped."""
    try:
        return json.dumps(obj, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        # Escaped, a lone surrogate is valid JSON that every client can decode.
        return json.dumps(obj).encode()
