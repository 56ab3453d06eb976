#!/usr/bin/env python3
"""Copies a Hugging Face model directory with its model.safetensors' f32 tensors stored as f16
(half the bytes, for scripts/gpu-bundle.sh's 64 MiB; taper widens them back to f32 on load).
Standard library only: struct's 'e' format is IEEE half, rounding to nearest even.

Usage: gpu-bundle-minilm.py SOURCE_DIR OUT_DIR
"""
import json, os, shutil, struct, sys

CHUNK = 1 << 20  # values converted at a time


def main(source, out):
    os.makedirs(out, exist_ok=True)
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(os.path.join(source, name), os.path.join(out, name))
    with open(os.path.join(source, "model.safetensors"), "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        data = f.read()
    tensors = sorted(((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0])
    new_header, pieces, offset = {}, [], 0
    if "__metadata__" in header:
        new_header["__metadata__"] = header["__metadata__"]
    for name, info in tensors:
        start, end = info["data_offsets"]
        raw = data[start:end]
        if info["dtype"] == "F32":
            count = len(raw) // 4
            halves = bytearray()
            for at in range(0, count, CHUNK):
                n = min(CHUNK, count - at)
                values = struct.unpack_from(f"<{n}f", raw, 4 * at)
                halves += struct.pack(f"<{n}e", *values)
            raw, dtype = bytes(halves), "F16"
        else:
            dtype = info["dtype"]
        new_header[name] = {"dtype": dtype, "shape": info["shape"], "data_offsets": [offset, offset + len(raw)]}
        pieces.append(raw)
        offset += len(raw)
    encoded = json.dumps(new_header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        for raw in pieces:
            f.write(raw)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
