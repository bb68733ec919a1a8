"""Tokenisation is safe to call from several threads at once (a server preprocesses requests in threads)."""

import threading
import time
from typing import Any

from polyfuse.data.modalities.text import TextConfig, load_tokenizer, tokenize


class BorrowCheckingTokenizer:
    """Raises like a Hugging Face fast tokenizer used by two threads at once ("Already borrowed")."""

    def __init__(self) -> None:
        self.busy = False

    def __call__(self, text: str, truncation: bool, max_length: int) -> dict[str, Any]:
        if self.busy:
            raise RuntimeError("Already borrowed")
        self.busy = True
        try:
            time.sleep(0.001)  # long enough for another thread to arrive while this one holds it
            return {"input_ids": list(range(min(len(text.split()), max_length)))}
        finally:
            self.busy = False


def test_concurrent_tokenize_calls_never_share_the_tokenizer() -> None:
    tokenizer = BorrowCheckingTokenizer()
    errors: list[BaseException] = []

    def work(max_length: int) -> None:
        for _ in range(20):
            try:
                assert len(tokenize("a b c d e f", tokenizer, TextConfig(max_length=max_length))) == min(
                    6, max_length
                )
            except BaseException as e:
                errors.append(e)

    threads = [threading.Thread(target=work, args=(3 + i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_real_tokenizer_gives_the_same_ids_from_many_threads() -> None:
    tokenizer = load_tokenizer("minilm")
    texts = [f"row {i} says {'hello ' * (i % 7 + 1)}" for i in range(40)]
    expected = [
        tokenize(t, tokenizer, TextConfig(max_length=8 + i % 5)).tolist() for i, t in enumerate(texts)
    ]
    got: dict[int, list[int]] = {}

    def work(start: int) -> None:
        for i in range(start, len(texts), 4):
            got[i] = tokenize(texts[i], tokenizer, TextConfig(max_length=8 + i % 5)).tolist()

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(texts))] == expected
