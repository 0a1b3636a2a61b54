#!/usr/bin/env python3
"""Writes the seed corpora of tests/fuzz/corpus/ (except safetensors/, which kvforge's own
writer made; see docs/fuzzing.md) and fuzz_tokenize_tokenizers.h. Deterministic: running it
again gives the same bytes. Crashers kept as regression seeds (names starting with "crash-"
or "regress-") are left alone."""
import gzip, io, json, lzma, os, shutil, struct, tarfile, zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
SHARED = os.path.join(HERE, "..", "..", "..", "shared")


def out(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- tokenizers -----------------------------------------------------------------------------
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def added(id_, content, special=True, **kw):
    d = {"id": id_, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": special}
    d.update(kw)
    return d


def bpe(vocab, merges, **kw):
    m = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
         "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
         "ignore_merges": False, "vocab": vocab, "merges": merges}
    m.update(kw)
    return m


def tok(model, normalizer=None, pre=None, decoder=None, added_tokens=(), post=None):
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": list(added_tokens), "normalizer": normalizer,
            "pre_tokenizer": pre, "post_processor": post, "decoder": decoder, "model": model}


def merged_vocab(vocab, merges, prefix=""):
    for m in merges:
        a, b = m.split(" ") if isinstance(m, str) else m
        if prefix and b.startswith(prefix):
            b = b[len(prefix):]  # HF: a + b without b's continuing-subword prefix
        if a + b not in vocab:
            vocab[a + b] = len(vocab)


# A: GPT-2 style byte level, every byte covered, no normalizer: decode_ex(encode(x)) == x.
b2u = bytes_to_unicode()
va = {b2u[b]: i for i, b in enumerate(sorted(b2u))}
ma = ["Ġ t", "h e", "Ġ a", "i n", "Ġt he", "e r", "o n", "Ġ s", "r e", "a n", "Ġ w", "Ġ o",
      "e n", "Ġ c", "o u", "Ġ b", "Ġ f", "Ġ d", "a t", "Ġ 1"]
merged_vocab(va, ma)
tok_a = tok(bpe(va, ma),
            pre={"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                 "use_regex": True},
            decoder={"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                     "use_regex": True},
            added_tokens=[added(len(va), "<|endoftext|>")],
            post={"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                  "use_regex": True})

# B: SentencePiece style: Metaspace, byte fallback, NFKC, unk, decoder chain.
vb = {"<unk>": 0, "<s>": 1, "</s>": 2}
for b in range(256):
    vb["<0x%02X>" % b] = len(vb)
for c in "▁abcdefghijklmnopqrstuvwxyzTIA.,":
    vb[c] = len(vb)
mb = [["▁", "t"], ["h", "e"], ["▁t", "he"], ["▁", "a"], ["i", "n"], ["▁", "i"], ["e", "r"],
      ["▁", "w"], ["o", "n"], ["▁", "s"]]
merged_vocab(vb, mb)
tok_b = tok(bpe(vb, mb, unk_token="<unk>", byte_fallback=True, fuse_unk=True),
            normalizer={"type": "NFKC"},
            pre={"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first",
                 "split": True},
            decoder={"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            added_tokens=[added(0, "<unk>"), added(1, "<s>"), added(2, "</s>"),
                          added(len(vb), "<mask>", lstrip=True, rstrip=True),
                          added(len(vb) + 1, "hello", special=False, normalized=True,
                                single_word=True)],
            post={"type": "TemplateProcessing",
                  "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                             {"Sequence": {"id": "A", "type_id": 0}}],
                  "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                           {"Sequence": {"id": "B", "type_id": 1}}],
                  "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}})

# C: word-level splitting: regex Split with Oniguruma classes, Digits, Punctuation, suffixes.
vc = {"[UNK]": 0}
for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!?":
    vc[c] = len(vc)
    vc["##" + c] = len(vc)
    vc[c + "</w>"] = len(vc)
    vc["##" + c + "</w>"] = len(vc)
mc = [["t", "##h"], ["th", "##e</w>"], ["a", "##n"], ["an", "##d</w>"], ["##e", "##r"]]
merged_vocab(vc, mc, prefix="##")
tok_c = tok(bpe(vc, mc, unk_token="[UNK]", fuse_unk=True, continuing_subword_prefix="##",
                end_of_word_suffix="</w>"),
            normalizer={"type": "Sequence", "normalizers": [
                {"type": "NFD"}, {"type": "Lowercase"},
                {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
                {"type": "Strip", "left": True, "right": True},
                {"type": "Prepend", "prepend": " "}]},
            pre={"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "\\w+|[^\\w\\s]+"}, "behavior": "Isolated",
                 "invert": False},
                {"type": "Digits", "individual_digits": True}, {"type": "Punctuation",
                                                                "behavior": "Isolated"},
                {"type": "WhitespaceSplit"}]},
            decoder={"type": "BPEDecoder", "suffix": "</w>"},
            added_tokens=[added(0, "[UNK]"), added(len(vc), "[SEP]")])

TOKS = [("bytelevel", tok_a), ("metaspace", tok_b), ("split", tok_c)]
for name, t in TOKS:
    out("tokenizer_json", name + ".json", json.dumps(t, ensure_ascii=False, separators=(",", ":")))


def c_string(s):
    b = s.encode()
    lines, cur = [], ""
    for ch in b:
        c = chr(ch)
        if c in '"\\':
            cur += "\\" + c
        elif 32 <= ch < 127 and c != "?":
            cur += c
        else:
            cur += "\\%03o" % ch
        if len(cur) > 90:
            lines.append('"%s"' % cur)
            cur = ""
    lines.append('"%s"' % cur)
    return "\n    ".join(lines)


with open(os.path.join(HERE, "fuzz_tokenize_tokenizers.h"), "w") as f:
    f.write("/* Generated by make_seeds.py: the tokenizers fuzz_tokenize.c encodes with (the same\n"
            " * JSON as corpus/tokenizer_json/). Do not edit. */\n")
    f.write("static const char *const fuzz_tokenizers[%d] = {\n" % len(TOKS))
    for name, t in TOKS:
        f.write("    /* %s */\n    %s,\n" % (name, c_string(json.dumps(t, ensure_ascii=False,
                                                                    separators=(",", ":")))))
    f.write("};\n")

# ---- fuzz_tokenize: selector byte (tokenizer index) + text ------------------------------------
texts = ["Hello, world! The quick brown fox.\n",
         "In the beginning God created the heaven and the earth. <|endoftext|> 1234567",
         "caf\u00e9 \uff21\uff22 \u00bd x\u0301 \U0001F600 hello <mask> <s> tab\there",
         "THE AND then 42, 3.14!? anderer   spaces\r\n"]
for i, t in enumerate(texts):
    out("tokenize", "text%d_%s" % (i, TOKS[i % 3][0]), bytes([i % 3]) + t.encode())

# ---- hf_config: the fixtures' config.json -------------------------------------------------
fx = os.path.join(SHARED, "fixtures")
for d in sorted(os.listdir(fx)):
    p = os.path.join(fx, d, "config.json")
    if os.path.isfile(p):
        shutil.copyfile(p, os.path.join(CORPUS, "hf_config", d + ".json"))

# ---- yaml --------------------------------------------------------------------------------
rec = os.path.join(HERE, "..", "..", "recipes", "scratch")
for n in ("base.yaml", "demo.yaml"):
    shutil.copyfile(os.path.join(rec, n), os.path.join(CORPUS, "yaml", n))
out("yaml", "lists.yaml", """run: {name: fz, seed: 7, device: cpu}
model:
  attention: cla2_gqa2
  d_model: 64
  n_layers: 4
  n_heads: 4
  vocab_size: 300
  kv_producers: [0, 2]
  window: "16, 0, 16, 0"
  norm: layernorm
  mlp: gelu
  position: learned
  bias: true
data: {train: "data/x.jsonl", seq_len: 32, batch_size: 2, tokenizer: byte}
optim: {name: sgd, lr: 1e-2, min_lr: 0, schedule: wsd, decay_fraction: 0.3, momentum: 0.9}
train: {steps: 1e3, log_every: 10, eval_every: 0, save_every: 100}
""")
out("yaml", "mla.yaml", """model:
  attention: mla_r32_d8
  d_model: 128
  n_layers: 2
  n_heads: 4
  match_params: gqa2
data:
  train: t.txt
  seq_len: 64
""")
out("yaml", "set_lr", "optim.lr=3e-4")
out("yaml", "set_attention", "model.attention=swa64_gqa2")

# ---- corpus: selector byte (see fuzz_corpus.c) + bytes -----------------------------------
def shard(tokens, u32=False):
    h = [0] * 256
    h[0], h[1], h[2] = (20240801, 7, len(tokens)) if u32 else (20240520, 1, len(tokens))
    return struct.pack("<256i", *h) + struct.pack("<%d%s" % (len(tokens), "I" if u32 else "H"),
                                                  *tokens)


def tar(entries, mode="w"):
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode=mode, format=tarfile.USTAR_FORMAT) as tf:
        for name, data in entries:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
            tf.addfile(ti, io.BytesIO(data))
    return bio.getvalue()


def gz(data):
    return gzip.compress(data, mtime=0)


jsonl = b'{"text": "first doc"}\n\n{"text": "caf\\u00e9 second"}\n{"text": ""}\n'
sh16 = shard([1, 2, 3, 256, 65, 66])
sh32 = shard([7, 8, 256], u32=True)
entries = [("a.txt", b"plain text\n"), ("b.jsonl", jsonl), ("c.bin", sh16), (".hidden", b"x"),
           ("d/e.txt.gz", gz(b"zipped text"))]
zbio = io.BytesIO()
with zipfile.ZipFile(zbio, "w", zipfile.ZIP_DEFLATED) as zf:
    for name, data in [("a.txt", b"zip text"), ("b.jsonl", jsonl), ("c.bin", sh32)]:
        zi = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        zi.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(zi, data)
out("corpus", "0_u16.bin", bytes([0]) + sh16)
out("corpus", "0_u32.bin", bytes([16]) + sh32)
out("corpus", "1_docs.jsonl", bytes([1]) + jsonl)
out("corpus", "2_mixed.tar", bytes([2]) + tar(entries))
out("corpus", "3_mixed.tar.gz", bytes([3 | 8]) + gz(tar(entries)))
out("corpus", "4_mixed.zip", bytes([4]) + zbio.getvalue())
out("corpus", "5_text.txt", bytes([5]) + "text with \u00e9 and \U0001F600\n".encode())
out("corpus", "6_docs.jsonl.gz", bytes([6]) + gz(jsonl))
out("corpus", "7_nested.tar.xz", bytes([7]) + lzma.compress(
    tar([("inner.tar", tar(entries[:3]))]), format=lzma.FORMAT_XZ))
print("seeds written under", CORPUS)

# ---- libFuzzer dictionaries: the quoted words of each parser's source, plus syntax tokens ---
import re

SRC = os.path.join(HERE, "..", "..")


def words(path):
    with open(os.path.join(SRC, path), encoding="utf-8") as f:
        return sorted(set(re.findall(r'"([A-Za-z_][A-Za-z_0-9]{1,40})"', f.read())))


def write_dict(name, entries):
    d = os.path.join(HERE, "dict")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "w") as f:
        f.write("# libFuzzer dictionary, generated by make_seeds.py\n")
        for i, e in enumerate(entries):
            esc = "".join("\\\\" if c == "\\" else '\\"' if c == '"' else c if 32 <= ord(c) < 127
                          else "\\x%02x" % ord(c) for c in e)
            f.write('k%d="%s"\n' % (i, esc))


json_syntax = ["{", "}", "[", "]", ":", ",", "null", "true", "false", "-1", "1e999", "0.5",
               "\\u0000", "\\ud800", "9223372036854775807", "18446744073709551616"]
write_dict("hf_config.dict", ['"%s"' % w for w in words("model/hf_config.c")] + json_syntax)
write_dict("tokenizer_json.dict", ['"%s"' % w for w in words("data/tokenizer_hf.c")] +
           json_syntax + ["\\\\s", "\\\\w", "\\\\p{L}", "(?", "\u2581", "<0x", "##", "</w>"])
write_dict("safetensors.dict", ['"%s"' % w for w in ("__metadata__", "dtype", "shape",
                                                      "data_offsets", "F32", "F64", "BF16",
                                                      "F16", "I32", "I64", "U8", "BOOL",
                                                      "F8_E4M3", "format", "pt")] + json_syntax)
yaml_words = words("train/run_config.c")
write_dict("yaml.dict", yaml_words + [w + ":" for w in yaml_words] +
           ["run:", "model:", "data:", "optim:", "train:", "- ", ": ", "{", "}", "[", "]", "---",
            "...", "&a", "*a", "!!str", "|", ">", "'", '"', "#", "\n  ", "=", ".", "1e6", "0x10",
            "mha", "gqa2", "mqa", "sqa_q4kv2", "mla_r32_d8", "mla_partial_r16_d4", "cla2_",
            "swa64_"])
