"""Makes the tiny Hugging Face models taper's tests load (tests/fixtures/tiny-gpt2, tiny-llama,
tiny-qwen2, tiny-t5 and tiny-t5-v1_1): random weights from transformers' own classes, a byte-level BPE tokenizer trained
on the shipped corpus, and the logits transformers computes for one input (expected.safetensors:
input_ids, logits; and decoder_input_ids for T5). Run once by scripts/make-hf-fixtures.sh; the output
(under 1 MB) is committed, so the tests need no PyTorch.

Every parameter is drawn at random (norm gains around 1, biases around 0), so a tensor loaded
into the wrong place, or the wrong way round, changes the logits."""

import json
import os
import sys

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

ROOT = os.path.join(os.path.dirname(__file__), "..")
OUT = os.path.join(ROOT, "tests", "fixtures")
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun."


def byte_level_tokenizer(corpus: str, vocab_size: int, specials: list) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([corpus], trainer)
    return tok


def randomize(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or "layer_norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))


def write(name: str, model: torch.nn.Module, tok: Tokenizer) -> None:
    out = os.path.join(OUT, name)
    os.makedirs(out, exist_ok=True)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    ids = torch.tensor([tok.encode(TEXT).ids[:40]])
    tensors = {"input_ids": ids}
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            tensors["decoder_input_ids"] = torch.tensor([[0] + tok.encode("It is the east").ids[:15]])
            logits = model(input_ids=ids, decoder_input_ids=tensors["decoder_input_ids"]).logits.float()
        else:
            logits = model(ids).logits.float()
    tensors = {k: v.to(torch.int64) for k, v in tensors.items()}
    tensors["logits"] = logits.contiguous()
    save_file(tensors, os.path.join(out, "expected.safetensors"))
    print(f"{out}: {sum(p.numel() for p in model.parameters())} parameters, logits {tuple(logits.shape)}")


def main() -> None:
    torch.manual_seed(0)
    with open(os.path.join(ROOT, "data", "shakespeare.txt"), encoding="utf-8") as f:
        corpus = f.read()[:200_000]
    tok = byte_level_tokenizer(corpus, 320, ["<|endoftext|>"])
    vocab = tok.get_vocab_size()
    eos = tok.token_to_id("<|endoftext|>")
    gpt2 = GPT2Config(
        vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4, activation_function="gelu_new",
        bos_token_id=eos, eos_token_id=eos,
    )
    model = GPT2LMHeadModel(gpt2)
    randomize(model)
    write("tiny-gpt2", model, tok)
    llama = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
        tie_word_embeddings=False, bos_token_id=eos, eos_token_id=eos,
    )
    model = LlamaForCausalLM(llama)
    randomize(model)
    write("tiny-llama", model, tok)
    gpt_tok = tok
    # d_model and d_kv powers of four: T5's scalings, folded into taper's weights, are then
    # powers of two, and a load -> export round trip is exact.
    # T5's own special tokens, at T5's ids: <pad> 0 (also the decoder's start), </s> 1, <unk> 2.
    tok = byte_level_tokenizer(corpus, 320, ["<pad>", "</s>", "<unk>"])
    t5 = T5Config(
        vocab_size=tok.get_vocab_size(), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
        feed_forward_proj="relu", tie_word_embeddings=True, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )
    model = T5ForConditionalGeneration(t5)
    randomize(model)
    write("tiny-t5", model, tok)
    # T5 v1.1's recipe: gated-gelu (the tanh GELU gating), an untied head.
    t5 = T5Config(
        vocab_size=tok.get_vocab_size(), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=1,
        num_heads=2, feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )
    model = T5ForConditionalGeneration(t5)
    randomize(model)
    write("tiny-t5-v1_1", model, tok)
    # Qwen2: Llama's layout with biases on q, k and v alone; a tied head here.
    qwen2 = Qwen2Config(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos, use_sliding_window=False,
    )
    model = Qwen2ForCausalLM(qwen2)
    randomize(model)
    write("tiny-qwen2", model, gpt_tok)


if __name__ == "__main__":
    sys.exit(main())
