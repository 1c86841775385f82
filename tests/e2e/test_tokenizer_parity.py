"""Parity of runtime/tokenizer/tokenizer.h (through tools/kbitd_tokenize) with Hugging Face `tokenizers`.

Encodes and decodes a few hundred varied lines (fixed-seed random Unicode included) with the
test tokenizers in tests/data/tokenizers/ and with variants of them (other pre-tokenizer and
decoder settings), and checks ids, decoded text and streaming decoding against the installed
`tokenizers`. The binary is found under $KBITD_BUILD_DIR (default: build/).
"""
import copy
import json
import os
import random
import subprocess

import pytest
from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "data", "tokenizers")
BUILD = os.environ.get("KBITD_BUILD_DIR", os.path.join(ROOT, "build"))
CLI = os.path.join(BUILD, "tools", "kbitd_tokenize", "kbitd_tokenize")

# GPT-4o / Llama-4 style: case-aware letter runs with optional contractions.
O200K_PATTERN = "|".join([
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}", r" ?[^\s\p{L}\p{N}]+[\r\n/]*", r"\s*[\r\n]+", r"\s+(?!\S)", r"\s+"])
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def load(name):
    with open(os.path.join(DATA, name + ".json"), encoding="utf-8") as f:
        return json.load(f)


def variants():
    """(name, tokenizer.json dict): the committed tokenizers and edited variants of them."""
    gpt2, llama3, llama2 = load("gpt2_bytelevel"), load("llama3_regex"), load("llama2_metaspace")
    out = [("gpt2_bytelevel", gpt2), ("llama3_regex", llama3), ("llama2_metaspace", llama2)]
    v = copy.deepcopy(gpt2)
    v["pre_tokenizer"]["add_prefix_space"] = True
    out.append(("gpt2_prefix_space", v))
    v = copy.deepcopy(llama3)
    v["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {"Regex": QWEN2_PATTERN}
    v["model"]["ignore_merges"] = False
    v["normalizer"] = {"type": "NFC"}  # as Qwen2's tokenizer.json has
    out.append(("qwen2_regex_nfc", v))
    v = copy.deepcopy(llama3)
    v["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {"Regex": O200K_PATTERN}
    out.append(("o200k_regex", v))
    v = copy.deepcopy(gpt2)  # Falcon-style sequence
    v["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Punctuation", "behavior": "Contiguous"},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        {"type": "Digits", "individual_digits": False},
        {"type": "Split", "pattern": {"Regex": "[0-9][0-9][0-9]"}, "behavior": "Isolated",
         "invert": False}]}
    out.append(("falcon_sequence", v))
    v = copy.deepcopy(llama2)  # whitespace splitters before a Metaspace
    v["normalizer"] = None
    v["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, {"type": "WhitespaceSplit"},
        {"type": "Punctuation", "behavior": "Isolated"},
        {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}]}
    out.append(("whitespace_split_digits", v))
    v = copy.deepcopy(llama2)
    v["normalizer"] = None
    v["pre_tokenizer"] = {"type": "Whitespace"}
    out.append(("whitespace_words", v))
    for scheme in ["first", "always", "never"]:
        for split in [True, False]:
            v = copy.deepcopy(llama2)
            v["normalizer"] = None
            v["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581",
                                  "prepend_scheme": scheme, "split": split}
            v["decoder"] = {"type": "Sequence", "decoders": [
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme,
                 "split": split}]}
            out.append((f"metaspace_{scheme}_{'split' if split else 'nosplit'}", v))
    return out


def random_unicode(rng, n):
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF),
              (0x590, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF), (0x2000, 0x206F),
              (0x2190, 0x23FF), (0x3000, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xACFF),
              (0xFF00, 0xFFEF), (0x1F300, 0x1F6FF), (0x1D400, 0x1D4FF), (0x10000, 0x1007F),
              (0xE000, 0xE00F), (0x0, 0x1F)]
    chars = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        chars.append(chr(rng.randint(lo, hi)))
    return "".join(chars)


def corpus():
    with open(os.path.join(DATA, "golden.json"), encoding="utf-8") as f:
        lines = list(json.load(f)["texts"])
    rng = random.Random(20240517)
    words = ("the of and to in is you that it he was for on are as with his they I at be this "
             "have from or one had by word but not what all were we when your can said there "
             "Größe naïve café 東京 我们 한국어 😀 👍🏽 0 7 42 1234 3.14 x_1 foo() a->b {x} "
             "<|endoftext|> <|begin_of_text|> <|eot_id|> <s> </s> <unk> <mask> [WORD] "
             "<|tool|> <|im_start|> <|im_end|> <tool_call> fancy hello world 's 'LL 're").split()
    spaces = [" ", "  ", "\t", "\n", "\r\n", " \n ", "   ", "\u00a0", "\u3000", ""]
    for _ in range(150):
        lines.append("".join(rng.choice(words) + rng.choice(spaces)
                             for _ in range(rng.randint(1, 20))))
    for _ in range(150):
        lines.append(random_unicode(rng, rng.randint(1, 40)))
    marks = [chr(c) for c in range(0x300, 0x370)] + ["\u093c", "\u05b0", "\u0f71", "\u302a"]
    bases = list("aeiouAEOnsczAE") + ["\u1100", "\u1161", "\u11a8", "\uac00", "\u0915", "\u212b",
                                      "\u0958", "\u1e9b", "\u03d2", "\u0f40", "\u05d0"]
    for _ in range(60):  # canonical composition, reordering, exclusions, Hangul
        lines.append("".join(rng.choice(bases if rng.random() < 0.5 else marks)
                             for _ in range(rng.randint(1, 12))))
    for _ in range(30):
        digits = "".join(rng.choice("0123456789 ,.") for _ in range(rng.randint(1, 30)))
        lines.append(digits)
    lines.append("long " * 500 + "x" * 3000)  # long words and runs
    return lines


def run_cli(path, requests):
    proc = subprocess.run([CLI, "--tokenizer", path], input="\n".join(
        json.dumps(r) for r in requests) + "\n", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    replies = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(replies) == len(requests)
    return replies


@pytest.fixture(scope="module")
def lines():
    return corpus()


def test_cli_is_built():
    assert os.path.exists(CLI), f"{CLI} missing: build with cmake first (KBITD_BUILD_DIR)"


@pytest.mark.parametrize("name,spec", variants(), ids=[n for n, _ in variants()])
def test_encode_decode_parity(tmp_path, lines, name, spec):
    path = str(tmp_path / "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False)
    ref = Tokenizer.from_file(path)
    requests, expected = [], []
    for text in lines:
        for add in (True, False):
            requests.append({"encode": text, "add_special_tokens": add})
            expected.append({"ids": ref.encode(text, add_special_tokens=add).ids})
    replies = run_cli(path, requests)
    for req, got, want in zip(requests, replies, expected):
        assert got == want, f"{name}: encode {req!r}"

    # Decoding (plain, skipping specials, streamed) of the encodings and of random id runs.
    rng = random.Random(7)
    vocab = ref.get_vocab_size()
    id_lists = [e["ids"] for e in expected[::2]]
    id_lists += [[rng.randrange(vocab) for _ in range(rng.randint(1, 30))] for _ in range(100)]
    requests, expected = [], []
    for ids in id_lists:
        for skip in (False, True):
            text = ref.decode(ids, skip_special_tokens=skip)
            requests.append({"decode": ids, "skip_special_tokens": skip})
            expected.append(text)
            requests.append({"stream": ids, "skip_special_tokens": skip})
            expected.append(text)
    replies = run_cli(path, requests)
    for req, got, want in zip(requests, replies, expected):
        if "decode" in req:
            assert got == {"text": want}, f"{name}: decode {req!r}"
        else:
            assert "pieces" in got, f"{name}: stream {req!r}: {got}"
            assert "".join(got["pieces"]) == want, f"{name}: stream {req!r}: {got['pieces']}"
            for piece in got["pieces"][:-1]:
                assert not piece.endswith("\ufffd") or want.count("\ufffd"), piece


def test_invalid_utf8_is_rejected():
    # The API takes UTF-8 text; `tokenizers` only accepts Unicode strings, so invalid bytes
    # cannot reach it. kbitd rejects them with an error that gives the offset.
    path = os.path.join(DATA, "llama3_regex.json")
    cases = ["ff", "68c3", "6869e28228", "eda080", "c0af", "f4908080", "6869fe"]
    replies = run_cli(path, [{"encode_hex": h} for h in cases] + [{"encode_hex": "68c3a9"}])
    for hex_text, reply in zip(cases, replies):
        assert "error" in reply and "not valid UTF-8" in reply["error"], (hex_text, reply)
    ref = Tokenizer.from_file(path)
    assert replies[-1] == {"ids": ref.encode("hé").ids}


def test_invalid_ids_are_rejected():
    path = os.path.join(DATA, "gpt2_bytelevel.json")
    size = Tokenizer.from_file(path).get_vocab_size()
    replies = run_cli(path, [{"decode": [1, size + 5]}, {"decode": [-1]}, {"stream": [2, size]},
                             {"info": True}])
    assert all("error" in r and "not in the vocabulary" in r["error"] for r in replies[:3])
    assert replies[3]["vocab_size"] == size


def test_unsupported_component_names_the_field(tmp_path):
    spec = load("llama3_regex")
    spec["normalizer"] = {"type": "NFKC"}
    path = str(tmp_path / "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    proc = subprocess.run([CLI, "--tokenizer", path], input="", capture_output=True, text=True)
    assert proc.returncode == 1
    assert "normalizer.type" in proc.stderr and "NFKC" in proc.stderr
