"""OpenAI CLIP's byte-level BPE tokenizer (same vocabulary file, same token ids)."""
import functools
import gzip
import html
import os.path as osp

import ftfy
import regex as re

VOCAB_PATH = osp.join(osp.dirname(osp.abspath(__file__)), "bpe_simple_vocab_16e6.txt.gz")
START, END = "<|startoftext|>", "<|endoftext|>"
N_MERGES = 49152 - 256 - 2


@functools.lru_cache()
def bytes_to_unicode():
    """A printable character for every byte: BPE works on text, but must cover arbitrary bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes)))


def symbol_pairs(word):
    return {(a, b) for a, b in zip(word, word[1:])}


def basic_clean(text):
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def whitespace_clean(text):
    return re.sub(r"\s+", " ", text).strip()


class SimpleTokenizer:
    def __init__(self, bpe_path=VOCAB_PATH):
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        with gzip.open(bpe_path) as handle:
            lines = handle.read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1:N_MERGES + 1]]
        vocab = list(self.byte_encoder.values())
        vocab += [symbol + "</w>" for symbol in vocab]
        vocab += ["".join(merge) for merge in merges]
        vocab += [START, END]
        self.encoder = {token: index for index, token in enumerate(vocab)}
        self.decoder = {index: token for token, index in self.encoder.items()}
        self.bpe_ranks = {merge: rank for rank, merge in enumerate(merges)}
        self.cache = {START: START, END: END}
        self.pattern = re.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            re.IGNORECASE,
        )

    def bpe(self, token):
        """Merge the characters of one pre-token by rank until no known pair is left."""
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = symbol_pairs(word)
            best = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        result = " ".join(word)
        self.cache[token] = result
        return result

    def encode(self, text):
        ids = []
        for token in self.pattern.findall(whitespace_clean(basic_clean(text)).lower()):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(token).split(" "))
        return ids

    def decode(self, ids):
        text = "".join(self.decoder[index] for index in ids)
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ")


@functools.lru_cache(maxsize=1)
def get_tokenizer():
    """One tokenizer per process, built on first use (reading the vocabulary takes a moment)."""
    return SimpleTokenizer()
