#!/usr/bin/env python3
"""Fernet interop vectors between Python's `cryptography` and cache-core.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install cryptography
    /tmp/venv/bin/python tests/vectors/make_fernet_vectors.py

1. Writes fernet_from_python.json: an `encrypt` entry as a Python service
   would store it (the README's envelope around a Fernet token of the JSON
   value, fixed time and IV, so the file is reproducible). The Rust test
   `fernet_entries_written_by_python_read_in_rust` reads it.
2. Checks fernet_from_rust.json, written by the Rust test
   `write_rust_fernet_vector` (run with --ignored): parses the envelope
   and decrypts the token with `cryptography`.

The keys are test keys, never used anywhere else.
"""
import json
import pathlib
import struct

from cryptography.fernet import Fernet

HERE = pathlib.Path(__file__).parent
KEY = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4="
MAGIC, VERSION, ENCRYPTED = b"\xc1\xe5", 1, 0b10


def envelope(flags, written_ms, payload, soft_expiry_ms=0, compute_ms=0, tags=()):
    out = MAGIC + bytes([VERSION, flags])
    out += struct.pack(">QQIB", written_ms, soft_expiry_ms, compute_ms, len(tags))
    for tag, version in tags:
        raw = tag.encode()
        out += struct.pack(">H", len(raw)) + raw + struct.pack(">Q", version)
    return out + payload


def open_envelope(entry):
    assert entry[:2] == MAGIC, "not an envelope"
    version, flags = entry[2], entry[3]
    assert version == VERSION, f"unknown version {version}"
    written_ms, soft_expiry_ms, compute_ms, n = struct.unpack(">QQIB", entry[4:25])
    pos, tags = 25, []
    for _ in range(n):
        (length,) = struct.unpack(">H", entry[pos : pos + 2])
        tag = entry[pos + 2 : pos + 2 + length].decode()
        (tag_version,) = struct.unpack(">Q", entry[pos + 2 + length : pos + 10 + length])
        tags.append((tag, tag_version))
        pos += 10 + length
    return flags, written_ms, soft_expiry_ms, tags, entry[pos:]


def main():
    fernet = Fernet(KEY)
    plaintext = json.dumps("sk-live-from-python").encode()
    time, iv = 1_700_000_000, bytes(range(16))
    token = fernet._encrypt_from_parts(plaintext, time, iv)
    entry = envelope(ENCRYPTED, time * 1000, token)
    (HERE / "fernet_from_python.json").write_text(
        json.dumps(
            {
                "key": KEY,
                "plaintext": plaintext.decode(),
                "time": time,
                "iv_hex": iv.hex(),
                "token": token.decode(),
                "entry_hex": entry.hex(),
            },
            indent=2,
        )
        + "\n"
    )
    print("wrote fernet_from_python.json")

    rust = json.loads((HERE / "fernet_from_rust.json").read_text())
    flags, _, _, _, payload = open_envelope(bytes.fromhex(rust["entry_hex"]))
    assert flags == ENCRYPTED, flags
    decrypted = Fernet(rust["key"]).decrypt(payload)
    assert decrypted == rust["plaintext"].encode(), decrypted
    assert json.loads(decrypted) == "sk-live-from-rust"
    print("fernet_from_rust.json: decrypted by cryptography", flush=True)


if __name__ == "__main__":
    main()
