#!/usr/bin/env python3
"""PyTorch reference for scripts/gpu-check.sh step 5: the GPT-2 small step taper times there
(12 layers, 768 wide, 12 heads, context 1024, learned positions, pre-LN, GELU, tied head,
dropout 0.1, AdamW lr 6e-4 betas 0.9/0.95 weight decay 0.1 on matrices, clipping at 1.0), in
eager PyTorch with bf16 autocast and scaled_dot_product_attention, on random token ids (the
speed does not depend on the text). What a lent GPU machine already has: torch alone.

Prints one JSON line: tokens_per_s over the timed steps, ms_per_step, params, flops_per_token
(taper's count: 6N + 12 L T d, N without the position table) and mfu against `--peak-flops` when given.

Usage: gpu-reference.py --vocab V [--batch 8] [--steps 30] [--device cuda] [--peak-flops F]
"""
import argparse, json, time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, width, heads, dropout):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.c_attn, self.c_proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.c_fc, self.mlp_proj = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.dropout = dropout

    def forward(self, x):
        b, t, c = x.shape
        # (b, t, 3c) -> three (b, heads, t, c / heads)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2)
                   for z in self.c_attn(self.ln_1(x)).split(c, dim=2))
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        # (b, heads, t, c / heads) -> (b, t, c)
        x = x + F.dropout(self.c_proj(y.transpose(1, 2).reshape(b, t, c)), drop, self.training)
        return x + F.dropout(self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)))), drop, self.training)


class Gpt(nn.Module):
    def __init__(self, vocab, layers=12, width=768, heads=12, context=1024, dropout=0.1):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(layers))
        self.ln_f, self.dropout = nn.LayerNorm(width), dropout
        for module in self.modules():  # GPT-2's initialisation, as taper's config asks
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, ids, targets):
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = F.dropout(self.wte(ids) + self.wpe(positions), self.dropout, self.training)
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T  # tied head
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocab", type=int, required=True)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--untimed", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--peak-flops", type=float, default=0.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = Gpt(args.vocab, args.layers, args.width, args.heads, args.context).to(device)
    params = sum(p.numel() for p in model.parameters())
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), fused=fused)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    started = None
    for step in range(args.steps):
        if step == args.untimed:
            sync()
            started = time.perf_counter()
        ids = torch.randint(0, args.vocab, (args.batch, args.context + 1), device=device)
        with autocast:
            loss = model(ids[:, :-1], ids[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync()
    seconds = time.perf_counter() - started
    timed = args.steps - args.untimed
    tokens_per_s = timed * args.batch * args.context / seconds
    # taper's count: the position table is looked up, not multiplied; the tied wte is.
    flops_per_token = 6 * (params - args.context * args.width) + 12 * args.layers * args.context * args.width
    mfu = tokens_per_s * flops_per_token / args.peak_flops if args.peak_flops else None
    print(json.dumps({"tokens_per_s": tokens_per_s, "ms_per_step": 1000 * seconds / timed, "params": params,
                      "flops_per_token": flops_per_token, "mfu": mfu, "final_loss": loss.item(),
                      "torch": torch.__version__, "device": torch.cuda.get_device_name() if fused else "cpu"}))


if __name__ == "__main__":
    main()
