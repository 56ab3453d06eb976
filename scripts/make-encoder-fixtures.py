"""Makes the tiny encoders of other families than BERT that taper's tests load
(tests/fixtures/tiny-roberta-*, tiny-xlm-roberta-*, tiny-distilbert-*, tiny-electra-*, tiny-albert-*): for each family and head
(sequence classification, token classification, masked LM) a model with random weights from
transformers' own classes, the family's tokenizer (RoBERTa: byte-level BPE with
`<s> A </s></s> B </s>` pairs; XLM-R: a SentencePiece-style Unigram; DistilBERT and ELECTRA
(embeddings narrower than the hidden size): BERT's WordPiece; ALBERT (three layers sharing one
layer's weights): a SentencePiece-style Unigram), and expected.safetensors: a right-padded batch of a single text and a pair as
transformers' tokenizer gives it (input_ids, attention_mask), the last hidden state and the
head's logits. tokenization.json holds the tokenizer's ids for texts and pairs with truncation.
Run once by scripts/make-encoder-fixtures.sh; the output (under 1 MB a model) is committed, so
the tests need no PyTorch."""

import json
import os
import sys

# One thread for the tokenizer trainers: their merges then come out the same on every run.
os.environ.setdefault("RAYON_RS_NUM_CPUS", "1")

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AlbertConfig,
    AlbertForMaskedLM,
    AlbertForSequenceClassification,
    AlbertForTokenClassification,
    DistilBertConfig,
    DistilBertForMaskedLM,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    ElectraConfig,
    ElectraForMaskedLM,
    ElectraForSequenceClassification,
    ElectraForTokenClassification,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
    XLMRobertaForSequenceClassification,
    XLMRobertaForTokenClassification,
)

ROOT = os.path.join(os.path.dirname(__file__), "..")
OUT = os.path.join(ROOT, "tests", "fixtures")
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0-4
BATCH = [("But soft, what light through yonder window breaks?", None),
         ("It is the east,", "and Juliet is the sun.")]
TEXTS = [
    ("ROMEO: But soft!", None),
    ("What light through yonder window breaks?", "It is the east, and Juliet is the sun."),
    ("Arise, fair sun, and kill the envious moon,", "Who is already sick and pale with grief"),
    ("O Romeo, Romeo! wherefore art thou Romeo?", None),
    ("Deny thy father", "and refuse thy name;"),
]


def roberta_tokenizer(corpus: str) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([corpus], trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                      add_prefix_space=False)
    return tok


def xlmr_tokenizer(corpus: str) -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=SPECIALS, unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(corpus.splitlines(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return tok


def wordpiece_tokenizer(corpus: str) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                                        show_progress=False)
    tok.train_from_iterator(corpus.splitlines(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok


def albert_tokenizer(corpus: str) -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"],
                                      unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(corpus.splitlines(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok


def randomize(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name or name.endswith("_norm.weight") or name.endswith("_norm.bias"):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))


def write(name: str, model, hf_tok) -> None:
    out = os.path.join(OUT, name)
    os.makedirs(out, exist_ok=True)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    hf_tok.save_pretrained(out)
    texts = [a for a, _ in BATCH]
    pairs = [b for _, b in BATCH]
    single = hf_tok(texts[0])["input_ids"]
    pair = hf_tok(texts[1], pairs[1])["input_ids"]
    n = max(len(single), len(pair))
    pad = hf_tok.pad_token_id
    ids = torch.tensor([single + [pad] * (n - len(single)), pair + [pad] * (n - len(pair))])
    mask = (ids != pad).long()
    with torch.no_grad():
        output = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    tensors = {
        "input_ids": ids, "attention_mask": mask,
        "hidden": output.hidden_states[-1].float().contiguous(), "logits": output.logits.float().contiguous(),
    }
    save_file(tensors, os.path.join(out, "expected.safetensors"))
    cases = []
    for max_length in [8, 12, 64]:
        for text, text_pair in TEXTS:
            enc = hf_tok(text, text_pair, truncation=True, max_length=max_length)
            cases.append({"text": text, "text_pair": text_pair, "max_length": max_length,
                          "input_ids": enc["input_ids"]})
    with open(os.path.join(out, "tokenization.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, indent=1)
    print(f"{out}: {sum(p.numel() for p in model.parameters())} parameters, logits {tuple(output.logits.shape)}")


def main() -> None:
    torch.manual_seed(0)
    with open(os.path.join(ROOT, "data", "shakespeare.txt"), encoding="utf-8") as f:
        corpus = f.read()[:200_000]
    families = [
        ("roberta", roberta_tokenizer(corpus), RobertaConfig,
         [RobertaForSequenceClassification, RobertaForTokenClassification, RobertaForMaskedLM]),
        ("xlm-roberta", xlmr_tokenizer(corpus), XLMRobertaConfig,
         [XLMRobertaForSequenceClassification, XLMRobertaForTokenClassification, XLMRobertaForMaskedLM]),
    ]
    for family, tok, config_class, classes in families:
        hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                         cls_token="<s>", sep_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                         mask_token="<mask>")
        config = config_class(
            vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64 + 2, type_vocab_size=1, pad_token_id=1,
            bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5,
        )
        write_family(family, config, classes, hf_tok)
    tok = wordpiece_tokenizer(corpus)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                                     unk_token="[UNK]", mask_token="[MASK]", model_input_names=["input_ids", "attention_mask"])
    config = DistilBertConfig(vocab_size=tok.get_vocab_size(), dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                              max_position_embeddings=64, activation="gelu", seq_classif_dropout=0.2, pad_token_id=0)
    write_family("distilbert", config,
                 [DistilBertForSequenceClassification, DistilBertForTokenClassification, DistilBertForMaskedLM], hf_tok)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                                     unk_token="[UNK]", mask_token="[MASK]")
    config = ElectraConfig(vocab_size=tok.get_vocab_size(), embedding_size=16, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
                           pad_token_id=0)
    write_family("electra", config,
                 [ElectraForSequenceClassification, ElectraForTokenClassification, ElectraForMaskedLM], hf_tok)
    tok = albert_tokenizer(corpus)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="<pad>",
                                     unk_token="<unk>", mask_token="[MASK]")
    # Three layers, one shared layer's weights.
    config = AlbertConfig(vocab_size=tok.get_vocab_size(), embedding_size=16, hidden_size=32, num_hidden_layers=3,
                          num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
                          hidden_act="gelu_new", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                          classifier_dropout_prob=0.1, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    write_family("albert", config,
                 [AlbertForSequenceClassification, AlbertForTokenClassification, AlbertForMaskedLM], hf_tok)


def write_family(family: str, config, classes: list, hf_tok) -> None:
    for suffix, cls in zip(["cls", "tok", "mlm"], classes):
        config.num_labels = {"cls": 2, "tok": 5, "mlm": 2}[suffix]  # the shipped sentiment and NER labels
        model = cls(config)
        randomize(model)
        if suffix == "mlm":
            model.tie_weights()
        write(f"tiny-{family}-{suffix}", model, hf_tok)


if __name__ == "__main__":
    sys.exit(main())
