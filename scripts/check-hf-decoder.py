"""Loads a decoder's `taper export --format hf` directory (GPT2LMHeadModel or LlamaForCausalLM)
with Hugging Face transformers' AutoModelForCausalLM and the exported tokenizer.json, scores
TEXT_FILE in the windows `taper eval --file` uses (consecutive windows of BLOCK_SIZE tokens, the
last one shorter), and compares the mean next-token loss with taper's (TAPER_LOSS): a tensor
in the wrong place, or the wrong way round, moves it far past the tolerance.
Usage: python check-hf-decoder.py EXPORT_DIR TEXT_FILE BLOCK_SIZE TAPER_LOSS
Exits 1 when |loss_transformers - loss_taper| > 1e-4."""
import sys

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

export, text_file, block, taper_loss = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
ids = Tokenizer.from_file(f"{export}/tokenizer.json").encode(open(text_file, encoding="utf-8").read()).ids
total, count = 0.0, 0
with torch.no_grad():
    for start in range(0, len(ids) - 1, block):
        window = ids[start : start + block + 1]
        x, y = torch.tensor([window[:-1]]), torch.tensor([window[1:]])
        logits = model(x).logits[0].double()
        total += torch.nn.functional.cross_entropy(logits, y[0], reduction="sum").item()
        count += y.numel()
loss = total / count
diff = abs(loss - taper_loss)
print(f"transformers {__import__('transformers').__version__} {model.config.architectures[0]}: {count} tokens, "
      f"loss {loss:.6f} vs taper {taper_loss:.6f}, |diff| = {diff:.2e}")
sys.exit(0 if diff <= 1e-4 else 1)
