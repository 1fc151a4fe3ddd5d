"""Synthetic instruction data with machine-checkable answers, several task families, from a seed."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

LETTERS = "abcdefghij"
# A small fictional fact table: lookups the model must memorise.
CAPITALS = {
    "Norvia": "Telmar", "Quendor": "Basrik", "Ostrel": "Dunmoor", "Valkesh": "Irren", "Prastia": "Lomb",
    "Zendar": "Kestrel", "Ulmark": "Frey", "Caldoro": "Mirth", "Brenwick": "Oda", "Fennmoor": "Halvik",
    "Sorrow": "Pell", "Tirith": "Nume", "Egland": "Rask", "Morva": "Sheel", "Dalmar": "Vost",
    "Hyrel": "Cairn",
}
UNITS = {("km", "m"): 1000, ("m", "cm"): 100, ("kg", "g"): 1000, ("h", "min"): 60}
SYSTEM = "You are a precise assistant. Answer with the result only."


def _spaced(word: str) -> str:
    return " ".join(word)


def _words(rng: random.Random, n: int) -> list[str]:
    seen: set[str] = set()
    while len(seen) < n:
        seen.add("".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 5))))
    return sorted(seen)


def _reverse(w: str) -> tuple[str, str]:
    return f"Reverse: {_spaced(w)}", _spaced(w[::-1])


def _upper(w: str) -> tuple[str, str]:
    return f"Uppercase: {_spaced(w)}", _spaced(w.upper())


def _sort(w: str) -> tuple[str, str]:
    return f"Sort the letters: {_spaced(w)}", _spaced("".join(sorted(w)))


FAMILIES: dict[str, Callable[[random.Random], list[tuple[str, str]]]] = {
    "reverse": lambda rng: [_reverse(w) for w in _words(rng, 700)],
    "uppercase": lambda rng: [_upper(w) for w in _words(rng, 700)],
    "sort": lambda rng: [_sort(w) for w in _words(rng, 700)],
    "capital": lambda rng: [
        (template.format(country=c), city)
        for c, city in CAPITALS.items()
        for template in ("What is the capital of {country}?", "Capital of {country}?", "Name the capital "
                         "city of {country}.")
    ],
    "convert": lambda rng: [(f"Convert {v} {a} to {b}.", str(v * f)) for (a, b), f in UNITS.items()
                            for v in range(1, 26)],
    "add": lambda rng: [(f"Add {a} and {b}.", str(a + b)) for a, b in itertools.product(range(10), repeat=2)],
}


def make_examples(seed: int) -> dict[str, list[tuple[str, str, str]]]:
    """Train/validation/test splits of (family, prompt, answer); no prompt appears in two splits."""
    rng = random.Random(seed)
    splits: dict[str, list[tuple[str, str, str]]] = {"train": [], "validation": [], "test": []}
    for family, make in FAMILIES.items():
        pairs = make(rng)
        rng.shuffle(pairs)
        n_eval = max(4, len(pairs) // 10)
        splits["test"] += [(family, p, a) for p, a in pairs[:n_eval]]
        splits["validation"] += [(family, p, a) for p, a in pairs[n_eval: 2 * n_eval]]
        splits["train"] += [(family, p, a) for p, a in pairs[2 * n_eval:]]
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


def as_chat(prompt: str, answer: str, system: bool = False) -> dict[str, list[dict[str, str]]]:
    """One chat-format JSONL row (a system turn only where asked: it costs tokens on every step)."""
    turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return {"messages": ([{"role": "system", "content": SYSTEM}] if system else []) + turns}
