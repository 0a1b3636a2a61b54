#!/usr/bin/env python3
"""Reference token ids from Hugging Face `tokenizers` for kvforge's tokenizer.json reader.

Run where the `tokenizers` package is installed (the GPU machine):

    python3 tools/make_tokenizer_refs.py --shared ../shared --out tests/data/tok_refs

For each fixture tokenizer (shared/fixtures/tok-*/tokenizer.json) it loads the file with
`tokenizers.Tokenizer.from_file`, encodes the KJV validation text with
`encode(val_text, add_special_tokens=False)` (kvforge's encode never adds template tokens;
for these two fixtures the ids are the same either way) and writes
    <out>/<name>.val_ids.bin   the ids, little-endian int32, nothing else
    <out>/<name>.val_ids.json  {"count", "sha256" (of the .bin bytes), "tokenizers_version",
                                "val_chars", "val_sha256" (of the val text's UTF-8 bytes)}
tests/test_tokenizer_hf.c compares kvforge's ids with these files when they exist.

Val text = the characters (code points, not bytes) of kjv.txt from index
floor(0.95 * len(text)) to the end, exactly as shared/tools/make_fixtures.py splits it.
It also re-checks every probe of the fixtures' expected.json and stops on a difference.
"""
import argparse
import hashlib
import json
import os
import struct
import sys


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default=os.environ.get("KVF_SHARED", os.path.join(root, "..", "shared")),
                    help="the shared folder (fixtures/ and data/kjv.txt); default $KVF_SHARED or ../shared")
    ap.add_argument("--out", default=os.path.join(root, "tests", "data", "tok_refs"),
                    help="where to write the files (default tests/data/tok_refs)")
    ap.add_argument("--names", nargs="*", default=["tok-bytelevel-512", "tok-sentencepiece-512"])
    args = ap.parse_args()

    import tokenizers
    from tokenizers import Tokenizer

    text = open(os.path.join(args.shared, "data", "kjv.txt"), encoding="utf-8").read()
    split = int(len(text) * 0.95)
    val = text[split:]
    val_sha = hashlib.sha256(val.encode("utf-8")).hexdigest()
    os.makedirs(args.out, exist_ok=True)
    for name in args.names:
        fx = os.path.join(args.shared, "fixtures", name)
        tok = Tokenizer.from_file(os.path.join(fx, "tokenizer.json"))
        exp_path = os.path.join(fx, "expected.json")
        if os.path.exists(exp_path):
            for case in json.load(open(exp_path, encoding="utf-8")):
                ids = tok.encode(case["text"]).ids
                if ids != case["ids"] or tok.decode(ids) != case["decoded"]:
                    sys.exit(f"{name}: expected.json probe {case['text']!r} differs with tokenizers "
                             f"{tokenizers.__version__}")
        ids = tok.encode(val, add_special_tokens=False).ids
        blob = struct.pack(f"<{len(ids)}i", *ids)
        with open(os.path.join(args.out, f"{name}.val_ids.bin"), "wb") as f:
            f.write(blob)
        meta = {
            "count": len(ids),
            "sha256": hashlib.sha256(blob).hexdigest(),
            "tokenizers_version": tokenizers.__version__,
            "val_chars": len(val),
            "val_start_char": split,
            "val_sha256": val_sha,
        }
        with open(os.path.join(args.out, f"{name}.val_ids.json"), "w") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")
        print(name, meta)


if __name__ == "__main__":
    main()
