#!/usr/bin/env python3
# Run on the GPU machine (transformers 5.17 there): for every folder given, load it with
# AutoModelForCausalLM.from_pretrained (float32, eager attention), run the input_ids stored
# in kvforge_logits.safetensors, and compare with kvforge's logits. Prints one line per
# model and a summary; exits 1 if any model fails to load or differs by more than 1e-4.
import sys, json
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
import transformers

bad = 0
rows = []
for d in sys.argv[1:]:
    try:
        ref = load_file(f"{d}/kvforge_logits.safetensors")
        m = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager")
        m.eval()
        with torch.no_grad():
            out = m(input_ids=ref["input_ids"].long()).logits.float()
        diff = (out - ref["logits"]).abs().max().item()
        ok = diff <= 1e-4
        rows.append((d, type(m).__name__, diff, ok))
        bad += not ok
    except Exception as e:  # a load failure is a result too
        rows.append((d, f"FAILED: {type(e).__name__}: {e}"[:120], float("nan"), False))
        bad += 1
print(f"transformers {transformers.__version__}, torch {torch.__version__}")
for d, cls, diff, ok in rows:
    print(f"{'ok  ' if ok else 'FAIL'} {d:40s} {cls:28s} max|logit diff| {diff:.3g}")
sys.exit(1 if bad else 0)
