"""Trains the tiny byte-level BPE tokenizer (384 tokens) used by the golden test models.

Usage: python3 tools/golden/train_tiny_tokenizer.py OUT/tokenizer.json
Corpus: the repository's own design notes (README.md), so the result is reproducible here.
"""
import pathlib
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

VOCAB_SIZE = 384


def main() -> None:
    root = pathlib.Path(__file__).resolve().parents[2]
    corpus = [(root / "README.md").read_text(encoding="utf-8")] * 4
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    tok.save(sys.argv[1])


if __name__ == "__main__":
    main()
