#!/usr/bin/env python3
"""Computes #[cached] keys with an independent RFC 8785 implementation.

Writes key_vectors.json beside this script: for each case, the canonical JSON
of the argument array and the key `{prefix}:{sha256 hex of that JSON}`, as
computed by the `rfc8785` package from PyPI (not by this project's code).
tests/tests/key_vectors.rs builds the same arguments as Rust values and checks
that `cache_core::key_for` gives the same keys.

    python3 -m venv /tmp/jcs && /tmp/jcs/bin/pip install rfc8785
    /tmp/jcs/bin/python tests/vectors/make_key_vectors.py

Integers beyond the IEEE double's safe range: `rfc8785` refuses them (RFC 8785
would round them through a double, so two IDs could share a key). The
library's documented extension writes them as exact decimals, as Python's
`json` does; for those cases this script lets `rfc8785` canonicalize the rest
of the value and puts `json.dumps(n)` where the integer goes. They are
marked `"extension": true` in the output.
"""

import hashlib
import json
import pathlib

import rfc8785

PREFIX = "v"
SAFE = 2**53 - 1  # rfc8785 refuses integers beyond ±(2^53 - 1)


def canonical(args):
    """RFC 8785 text of args, with out-of-range integers as exact decimals."""
    big = {}

    def swap(value):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, list):
                return [swap(v) for v in value]
            if isinstance(value, dict):
                return {k: swap(v) for k, v in value.items()}
            return value
        if -SAFE <= value <= SAFE:
            return value
        marker = f"\u0000big{len(big)}\u0000"
        big[marker] = value
        return marker

    text = rfc8785.dumps(swap(args)).decode("utf-8")
    for marker, value in big.items():
        quoted = rfc8785.dumps(marker).decode("utf-8")
        text = text.replace(quoted, json.dumps(value))
    return text, bool(big)


CASES = [
    # Strings
    ("ascii", ["hello"]),
    ("non_ascii", ["h\u00e9llo w\u00f6rld \u65e5\u672c"]),
    ("control_characters", ["\u0000\u0001\u0008\u0009\u000a\u000c\u000d\u001f"]),
    ("line_separators_and_del", ["\u2028\u2029\u007f"]),
    ("quote_backslash_slash", ['say "hi" \\ path/to']),
    ("emoji_surrogate_pair", ["\U0001F600 \U0001D11E"]),
    ("empty_string", [""]),
    # Integers
    ("small_integers", [0, -1, 42, 3]),
    ("two_pow_53_minus_1", [2**53 - 1, -(2**53 - 1)]),
    ("two_pow_53", [2**53, -(2**53)]),
    ("two_pow_53_plus_1", [2**53 + 1, -(2**53 + 1)]),
    ("i64_edges", [-(2**63), 2**63 - 1]),
    ("u64_max", [2**64 - 1]),
    ("i128_edges", [-(2**127), 2**127 - 1]),
    ("u128_max", [2**128 - 1]),
    # Floats
    ("point_one", [0.1]),
    ("one_e_minus_7", [1e-7]),
    ("one_e_minus_6", [1e-6]),
    ("one_e_21", [1e21]),
    ("one_e_20", [1e20]),
    ("negative_zero", [-0.0]),
    ("five_point_zero", [5.0]),
    ("one_third", [1 / 3]),
    ("smallest_subnormal", [2.0**-1074]),
    ("f64_max", [1.7976931348623157e308]),
    ("f64_min_positive_normal", [2.2250738585072014e-308]),
    ("fractional", [-123456789.125]),
    ("f32_point_one", [0.1]),
    # Maps (members sorted by UTF-16 code units: U+1F600 before U+FF61)
    ("map_utf16_order", [{"\uff61": 3, "\U0001F600": 2, "\u00e9": 1, "b": 0, "a": 0}]),
    ("nested_map", [{"outer": {"z": None, "b": [True, False]}, "a": 1}]),
    ("integer_keyed_map", [{"10": "ten", "9": "nine"}]),
    # Option, tuples, booleans
    ("option_none_and_some", [None, 3]),
    ("tuple_and_array", ["x", 2, [1, 2, 3], [True, None]]),
    ("booleans", [True, False]),
    ("unit_and_empty", [None, [], {}]),
    # A struct with a map inside (fields sorted too)
    ("search_struct", [{"query": "redis", "top_k": 10, "filters": {"lang": "en", "min_score": 0.5}, "exact": False}]),
    ("enum_variants", [["Point", {"Circle": 2}, {"Rect": {"w": 3, "h": 4}}]]),
]


def main():
    vectors = []
    for name, args in CASES:
        text, extension = canonical(args)
        key = f"{PREFIX}:{hashlib.sha256(text.encode('utf-8')).hexdigest()}"
        vectors.append({"name": name, "json": text, "key": key, "extension": extension})
    out = pathlib.Path(__file__).with_name("key_vectors.json")
    document = {
        "generator": f"make_key_vectors.py with rfc8785 {getattr(rfc8785, '__version__', '?')}",
        "prefix": PREFIX,
        "vectors": vectors,
    }
    out.write_text(json.dumps(document, indent=2, ensure_ascii=True) + "\n")
    print(f"wrote {len(vectors)} vectors to {out}")


if __name__ == "__main__":
    main()
