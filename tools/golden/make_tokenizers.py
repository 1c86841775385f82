#!/usr/bin/env python3
"""Trains the small test tokenizers under tests/data/tokenizers/ with Hugging Face `tokenizers`
and records golden encodings/decodings of a varied corpus (tests/data/tokenizers/golden.json).

Three tokenizers mirror the families kbitd must load (runtime/tokenizer/tokenizer.h):
  gpt2_bytelevel   BPE + ByteLevel pre-tokenizer (GPT-2 regex) + ByteLevel decoder.
  llama3_regex     BPE (ignore_merges) + Split(Llama-3 regex) + ByteLevel(use_regex=false),
                   TemplateProcessing "<|begin_of_text|> $A".
  llama2_metaspace BPE (byte_fallback, fuse_unk, <unk>) + normalizer Prepend("▁")+Replace(" ","▁"),
                   decoder Replace/ByteFallback/Fuse/Strip, TemplateProcessing "<s> $A".
Deterministic: the training text is generated from a fixed seed. Usage:
  python3 tools/golden/make_tokenizers.py [--out tests/data/tokenizers]
"""
import argparse
import json
import os
import random

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                        pre_tokenizers, processors, trainers)

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

ENGLISH = """The quick brown fox jumps over the lazy dog. It's a beautiful day, isn't it? We'll see
what they've done. I'm sure you'd agree that tokenizers are the unsung heroes of language models.
A byte pair encoding starts from single bytes and repeatedly merges the most frequent pair.
Quantized models store weights in four bits; the scale of each block is kept in higher precision.
Serving requests in continuous batches keeps the accelerator busy while requests come and go.
In 1998, 2,345 people paid $12.50 each; by 2024 the price was 3.14159 times higher (approx.).
Numbers like 1234567890 and 42 and 007 show up in logs, tables, versions 1.2.3 and dates 2024-05-17.
Email me at someone@example.com or visit https://example.org/path?query=1&x=y#frag for details.
"""

CODE = '''def fibonacci(n: int) -> int:
    """Returns the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a

int main(int argc, char** argv) {
  std::vector<int> v = {1, 2, 3};
  for (auto& x : v) { x *= 2; }
  return v.size() > 2 ? 0 : 1;
}
'''

MULTILINGUAL = [
    "Größere Äpfel schmecken süß, sagte der Bäcker.",
    "Les élèves ont étudié à l'école pendant l'été.",
    "¿Dónde está la biblioteca? ¡Allí, señor!",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",
    "東京は日本の首都です。今日は良い天気ですね。",
    "我们正在测试分词器的正确性和速度。",
    "한국어 문장도 잘 처리되어야 합니다.",
    "مرحبا بالعالم، هذا اختبار.",
    "नमस्ते दुनिया, यह एक परीक्षण है।",
    "สวัสดีชาวโลก นี่คือการทดสอบ",
    "Emoji: 😀 👍🏽 👨‍👩‍👧 🇺🇸 ❤️ 🚀✨",
]


def training_lines(seed):
    """A deterministic training corpus: English, code, multilingual and random mixtures."""
    rng = random.Random(seed)
    base = ENGLISH.splitlines() + CODE.splitlines() + MULTILINGUAL
    words = " ".join(base).split()
    lines = []
    for _ in range(4000):
        kind = rng.random()
        if kind < 0.5:
            lines.append(rng.choice(base))
        else:
            lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 15))))
    return lines


def add_tokens(tok, specials, extra):
    tok.add_special_tokens(specials)
    tok.add_tokens(extra)


def make_gpt2(lines):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(lines, trainer)
    add_tokens(tok, [AddedToken("<|pad|>", special=True)],
               [AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False),
                AddedToken("[WORD]", single_word=True, normalized=False),
                AddedToken("hello world", normalized=True)])
    return tok


def make_llama3(lines):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2500,
                                  special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(lines, trainer)
    add_tokens(tok, [AddedToken("<|eot_id|>", special=True),
                     AddedToken("<|tool|>", special=True, rstrip=True)],
               [AddedToken(" fancy", normalized=False)])
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
            special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])])
    return tok


def make_llama2(lines):
    byte_tokens = ["<0x%02X>" % b for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    # Trained with Metaspace so merges stay inside words; shipped with the Llama-2 layout
    # (normalizer + no pre-tokenizer), as transformers' Llama converter writes it.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=1800, special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens,
                                  limit_alphabet=120, show_progress=False)
    tok.train_from_iterator(lines, trainer)
    data = json.loads(tok.to_str())
    # The byte tokens belong to the model vocabulary, not to the added tokens.
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in byte_tokens]
    data["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    data["pre_tokenizer"] = None
    data["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    tok = Tokenizer.from_str(json.dumps(data))
    add_tokens(tok, [AddedToken("<|im_start|>", special=True, lstrip=True),
                     AddedToken("<|im_end|>", special=True)],
               [AddedToken("<tool_call>", special=False, normalized=False),
                AddedToken("fancy", special=False, normalized=True)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok


GOLDEN_TEXTS = [
    "Hello world",
    "hello world",
    " leading space and trailing space ",
    "The quick brown fox jumps over the lazy dog.",
    "It's, isn't, we'll, they've, I'm, you'd, THEY'RE, It'S",
    "Numbers: 1 12 123 1234 12345 3.14159 1,000,000 2024-05-17",
    "tabs\tand\nnewlines\r\nand   multiple    spaces",
    "   ",
    "\n\n\n",
    "trailing newline\n",
    "",
    "a",
    "Größere Äpfel schmecken süß.",
    "Les élèves ont étudié à l'école.",
    "Быстрая коричневая лиса.",
    "東京は日本の首都です。",
    "我们正在测试分词器。",
    "한국어 문장",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "Emoji: 😀 👍🏽 👨‍👩‍👧 🇺🇸 ❤️ 🚀✨",
    "combining: e\u0301 a\u0300 o\u0308 n\u0303 \u0301alone",
    "zero\u200bwidth\u200dspaces and nbsp\u00a0here\u3000ideographic",
    "def f(x):\n    return x ** 2  # square\n",
    "if (a < b && c >= d) { return a->b[0]; }",
    "<|endoftext|>",
    "text <|endoftext|> more text<|endoftext|>end",
    "<|begin_of_text|>Hello<|eot_id|>",
    "<s> hello </s>",
    "<s>hello</s><unk>",
    "a <mask> b<mask>c   <mask>",
    "[WORD] x[WORD] [WORD]y [WORD]",
    "say hello world now, hello worldly",
    "<|tool|>   call()<|tool|>x",
    "<|im_start|>user\nHi there<|im_end|>\n  <|im_start|>assistant",
    "<tool_call>{\"name\": \"f\"}</tool_call>",
    "a fancy fancier fancy",
    "'s 's 'S ſ 'ſ",
    "x'll'VE'Re",
    "mixed123abc456 ١٢٣ ½ Ⅻ ²",
    "\u00a0\u2000\u2028\u2029\u0085\u000b\u000c",
    "a\u0000b\u0001c\u007f",
    "ǅungla ǈ ǋ",
    "\U0001F600\U0001F600\U0001F600",
    "𝕳𝖊𝖑𝖑𝖔 𝔀𝓸𝓻𝓵𝓭",
    "▁already▁has▁meta",
    "  two leading spaces",
    "end with spaces   ",
    "   \n  \n x",
    "!!! ??? ... --- ***",
]


def golden_entry(tok, texts):
    entry = {"encode": [], "encode_plain": [], "decode": [], "decode_skip": []}
    for text in texts:
        ids = tok.encode(text, add_special_tokens=True).ids
        entry["encode"].append(ids)
        entry["encode_plain"].append(tok.encode(text, add_special_tokens=False).ids)
        entry["decode"].append(tok.decode(ids, skip_special_tokens=False))
        entry["decode_skip"].append(tok.decode(ids, skip_special_tokens=True))
    return entry


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                      "tests", "data", "tokenizers"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    lines = training_lines(seed=1234)
    golden = {"texts": GOLDEN_TEXTS, "tokenizers": {}}
    for name, make in [("gpt2_bytelevel", make_gpt2), ("llama3_regex", make_llama3),
                       ("llama2_metaspace", make_llama2)]:
        tok = make(lines)
        path = os.path.join(args.out, name + ".json")
        tok.save(path)
        golden["tokenizers"][name] = golden_entry(Tokenizer.from_file(path), GOLDEN_TEXTS)
        print(f"{path}: vocab {tok.get_vocab_size()}, {os.path.getsize(path)} bytes")
    with open(os.path.join(args.out, "golden.json"), "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
