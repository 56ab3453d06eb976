"""Makes tests/fixtures/tiny-t5-numbers: a tiny T5 trained by transformers on the shipped numbers
pairs (data/numbers, "3977" -> "three thousand nine hundred seventy seven") for a few hundred
steps, on purpose not to convergence, so that beams disagree and end at different lengths; and
beams.json, what transformers' `generate` returns for 16 validation sources under several
decoding settings (beams, length_penalty, early_stopping, no_repeat_ngram_size,
num_return_sequences, min_length / min_new_tokens, forced_bos_token_id, forced_eos_token_id;
greedy as well as beam search). tests/beam_search.rs decodes the same sources with taper and asks for
the same sequences and scores. Run once by scripts/make-beam-fixture.sh; the output (under
1 MB) is committed, so the tests need no PyTorch."""

import csv
import json
import os
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import T5Config, T5ForConditionalGeneration

ROOT = os.path.join(os.path.dirname(__file__), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "tiny-t5-numbers")
PAD, EOS = 0, 1
FORCED_FIRST = 20  # a token ("l") no output starts with: where it is forced, outputs must
STEPS, BATCH, MAX_NEW = 400, 64, 16

# transformers' generate() settings, each decoded for every source (max_new_tokens 16 unless set).
SETTINGS = [
    dict(num_beams=4, length_penalty=1.0, early_stopping=False),
    dict(num_beams=4, length_penalty=1.0, early_stopping=True, num_return_sequences=2),
    dict(num_beams=4, length_penalty=1.0, early_stopping="never"),
    dict(num_beams=4, length_penalty=2.0, early_stopping=False),
    dict(num_beams=4, length_penalty=0.5, early_stopping=False, num_return_sequences=4),
    dict(num_beams=3, length_penalty=-1.0, early_stopping=False),
    dict(num_beams=4, length_penalty=1.0, early_stopping=False, no_repeat_ngram_size=3, num_return_sequences=2),
    dict(num_beams=5, length_penalty=0.0, early_stopping="never", no_repeat_ngram_size=2),
    dict(num_beams=2, length_penalty=1.0, early_stopping=True),
    dict(num_beams=4, length_penalty=1.0, early_stopping=False, min_length=12),
    dict(num_beams=3, length_penalty=1.0, early_stopping=True, forced_eos_token_id=EOS, max_new_tokens=6),
    dict(num_beams=4, length_penalty=1.0, early_stopping=False, forced_bos_token_id=FORCED_FIRST),
    dict(num_beams=1, no_repeat_ngram_size=2, min_new_tokens=9),
    dict(num_beams=1, forced_bos_token_id=FORCED_FIRST, forced_eos_token_id=EOS, max_new_tokens=5),
]


def read_pairs(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        return [(row["source"], row["target"]) for row in csv.DictReader(f, delimiter="\t")]


def tokenizer(pairs: list) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=160,
        special_tokens=["<pad>", "</s>", "<unk>"],
        show_progress=False,
    )
    tok.train_from_iterator([s for pair in pairs for s in pair], trainer)
    return tok


def batch(tok: Tokenizer, pairs: list) -> tuple:
    """Sources with </s> (as taper's encode_source), labels with </s>, padded (labels with -100)."""
    src = [tok.encode(s).ids + [EOS] for s, _ in pairs]
    tgt = [tok.encode(t).ids + [EOS] for _, t in pairs]
    n, m = max(map(len, src)), max(map(len, tgt))
    ids = torch.tensor([s + [PAD] * (n - len(s)) for s in src])
    mask = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in src])
    labels = torch.tensor([t + [-100] * (m - len(t)) for t in tgt])
    return ids, mask, labels


def main() -> None:
    torch.manual_seed(0)
    train = read_pairs(os.path.join(ROOT, "data", "numbers", "train.tsv"))
    val = read_pairs(os.path.join(ROOT, "data", "numbers", "val.tsv"))
    tok = tokenizer(train)
    config = T5Config(
        vocab_size=tok.get_vocab_size(), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
        num_heads=4, feed_forward_proj="relu", tie_word_embeddings=True, pad_token_id=PAD, eos_token_id=EOS,
        decoder_start_token_id=PAD, dropout_rate=0.0,
    )
    model = T5ForConditionalGeneration(config)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for step in range(STEPS):
        rows = torch.randint(len(train), (BATCH,), generator=generator).tolist()
        ids, mask, labels = batch(tok, [train[i] for i in rows])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
        if step % 100 == 0 or step == STEPS - 1:
            print(f"step {step}: loss {loss.item():.4f}")
    model.eval()
    os.makedirs(OUT, exist_ok=True)
    model.save_pretrained(OUT, safe_serialization=True)
    tok.save(os.path.join(OUT, "tokenizer.json"))

    cases = []
    for source, target in val[:16]:
        input_ids = tok.encode(source).ids + [EOS]
        for setting in SETTINGS:
            setting = {"max_new_tokens": MAX_NEW, **setting}
            with torch.no_grad():
                out = model.generate(
                    torch.tensor([input_ids]), do_sample=False, output_scores=True, return_dict_in_generate=True,
                    **setting,
                )
            # Each sequence without the decoder start token, cut after its </s> (the rest is padding).
            sequences = []
            for row in out.sequences.tolist():
                row = row[1:]
                sequences.append(row[: row.index(EOS) + 1] if EOS in row else row)
            scores = out.sequences_scores.tolist() if setting["num_beams"] > 1 else None
            cases.append({
                "source": source, "reference": target, "input_ids": input_ids, "settings": setting,
                "sequences": sequences, "scores": scores,
                "texts": [tok.decode([t for t in s if t != EOS]) for s in sequences],
            })
    with open(os.path.join(OUT, "beams.json"), "w", encoding="utf-8") as f:
        json.dump({"transformers": __import__("transformers").__version__, "cases": cases}, f, indent=1)
    distinct = sum(len({tuple(c["sequences"][0]) for c in cases if c["source"] == s}) > 1 for s, _ in val[:16])
    print(f"{OUT}: {sum(p.numel() for p in model.parameters())} parameters, {len(cases)} cases; "
          f"{distinct} of 16 sources decode differently under different settings")


if __name__ == "__main__":
    sys.exit(main())
