"""Loads a `taper export --format hf` directory of a generative run with Hugging Face
transformers and the exported tokenizer.json, scores FILE as `taper eval --file` does, and
compares the mean loss with taper's (TAPER_LOSS): a tensor in the wrong place, or the wrong way
round, moves it far past the tolerance.
- GPT2LMHeadModel / LlamaForCausalLM (AutoModelForCausalLM): FILE is text, scored in
  consecutive windows of BLOCK_SIZE tokens (the last one shorter).
- T5ForConditionalGeneration: FILE is a TSV of `source` / `target` pairs; each source is its
  tokens then </s>, each target is scored with teacher forcing from the decoder start (both
  truncated as taper does: to BLOCK_SIZE - 1 tokens before the end token).
Usage: python check-hf-decoder.py EXPORT_DIR FILE BLOCK_SIZE TAPER_LOSS
Exits 1 when |loss_transformers - loss_taper| > 1e-4."""
import csv
import sys

import torch
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

export, path, block, taper_loss = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
tokenizer = Tokenizer.from_file(f"{export}/tokenizer.json")
config = AutoConfig.from_pretrained(export)
ce = torch.nn.functional.cross_entropy


def causal_lm():
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    ids = tokenizer.encode(open(path, encoding="utf-8").read()).ids
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, block):
        window = ids[start : start + block + 1]
        x, y = torch.tensor([window[:-1]]), torch.tensor([window[1:]])
        total += ce(model(x).logits[0].double(), y[0], reduction="sum").item()
        count += y.numel()
    return model, total, count


def seq2seq():
    model = AutoModelForSeq2SeqLM.from_pretrained(export, dtype=torch.float32).eval()
    eos, start = config.eos_token_id, config.decoder_start_token_id
    total, count = 0.0, 0
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            src = tokenizer.encode(row["source"], add_special_tokens=False).ids[: block - 1] + [eos]
            tgt = tokenizer.encode(row["target"], add_special_tokens=False).ids[: block - 1]
            logits = model(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([[start] + tgt])).logits
            total += ce(logits[0].double(), torch.tensor(tgt + [eos]), reduction="sum").item()
            count += len(tgt) + 1
    return model, total, count


with torch.no_grad():
    model, total, count = seq2seq() if config.is_encoder_decoder else causal_lm()
loss = total / count
diff = abs(loss - taper_loss)
print(f"transformers {__import__('transformers').__version__} {model.config.architectures[0]}: {count} tokens, "
      f"loss {loss:.6f} vs taper {taper_loss:.6f}, |diff| = {diff:.2e}")
sys.exit(0 if diff <= 1e-4 else 1)
