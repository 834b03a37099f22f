"""A byte-level CLIP vocabulary that needs no download: every byte is a token, no merges."""

import json
from pathlib import Path

from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    # The reversible byte → printable character map that CLIP's BPE uses (from GPT-2).
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def byte_level_vocab() -> dict[str, int]:
    """256 byte tokens, their end-of-word forms, then BOS and EOS: 514 tokens."""
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + [BOS, EOS]
    return {token: index for index, token in enumerate(tokens)}


def write_tokenizer(out_dir: Path, max_length: int = 77) -> CLIPTokenizer:
    """Write vocab.json and merges.txt into out_dir and return a CLIPTokenizer over them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(byte_level_vocab()), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    # Loading from the two files works on transformers 4.x and 5.x alike (their constructors differ).
    tokenizer = CLIPTokenizer.from_pretrained(
        str(out_dir),
        model_max_length=max_length,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        local_files_only=True,
    )
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer
