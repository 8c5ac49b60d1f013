"""Which split each file of a dataset is in: Hugging Face ``datasets``' inference, then nanostream's fallbacks
(docs/datasets.md#splits-and-the-text-column). Pure functions over relative file paths.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass

SPLIT_KEYWORDS = {  # datasets.data_files.SPLIT_KEYWORDS
    "train": ("train", "training"),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test", "testing", "eval", "evaluation"),
}
SEP = "[-._ 0-9]"  # datasets.data_files.NON_WORDS_CHARS
SHARDED = re.compile(r"^data/(?P<split>[^/]+)-[0-9]{5}-of-[0-9]{5}[^/]*\.[^/]*$")
HELD_OUT = ("validation", "test")  # a file in several splits goes to the first of these it is in
RULES = {1: "data/{split}-NNNNN-of-NNNNN file names", 2: "split folder names", 3: "split words in file names",
         4: "no split names (every file is train)"}


def _words(fold: bool, where: str) -> dict[str, re.Pattern[str]]:
    """Per split, the regex of its keywords as a folder name (search one folder) or file name part."""
    flags = re.IGNORECASE if fold else 0
    tail = f"(?:{SEP}|$)" if where == "dir" else SEP
    return {split: re.compile(rf"(?:^|{SEP})(?:{'|'.join(words)}){tail}", flags)
            for split, words in SPLIT_KEYWORDS.items()}


_MATCHERS = {(fold, where): _words(fold, where) for fold in (False, True) for where in ("dir", "file")}


def _matches(path: str, rule: int, fold: bool) -> set[str]:
    parts = path.split("/")
    words = _MATCHERS[(fold, "dir" if rule == 2 else "file")]
    pieces = parts[:-1] if rule == 2 else parts[-1:]
    return {split for split, word in words.items() if any(word.search(p) for p in pieces)}


def sharded_split(path: str) -> str | None:
    """The split name of a ``data/{split}-NNNNN-of-NNNNN*.*`` path (as written), or None."""
    m = SHARDED.match(path)
    return m["split"] if m else None


def infer(paths: Sequence[str], *, fold: bool = True) -> tuple[int, dict[str, set[str]]]:
    """``datasets``' rule (1-4) for these paths and the splits it puts each path in (empty: left out).
    Rule 1's names are mapped to train/validation/test by keyword (other names: left out)."""
    named = {p: sharded_split(p) for p in paths}
    if any(named.values()):
        alias = {w: split for split, words in SPLIT_KEYWORDS.items() for w in words}
        return 1, {p: {alias[n]} if n in alias else set() for p, n in named.items()}
    for rule in (2, 3):
        found = {p: _matches(p, rule, fold) for p in paths}
        if any(found.values()):
            return rule, found
    return 4, {p: {"train"} for p in paths}


def custom_splits(paths: Sequence[str]) -> list[str]:
    """Rule 1's split names that are none of nanostream's three (``data/random-00000-of-00001.parquet``)."""
    alias = {w for words in SPLIT_KEYWORDS.values() for w in words}
    return sorted({n for n in map(sharded_split, paths) if n and n not in alias})


@dataclass(frozen=True)
class Assignment:
    """The paths of each split (in the given order), the rule that named them, and the fallback used."""

    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]
    unassigned: tuple[str, ...]  # left out: no split under the rule that applied, or a split of another name
    rule: int  # the inference rule that applied: 1-4 (RULES)
    note: str = ""  # the fallback that gave the validation split, "" when the files named it
    held_out_last: bool = False  # validation is the last train file


def assign(paths: Sequence[str], val: str | None = None) -> Assignment:
    """Every path's split: ``datasets``' inference (case-insensitive keywords, and never train on what
    ``datasets`` holds out), then the ``val`` glob or the fallbacks of the module docstring."""
    rule, ours = infer(paths, fold=True)
    _, exact = infer(paths, fold=False)
    split: dict[str, str | None] = {}
    for p in paths:
        got = ours[p] | (exact[p] & set(HELD_OUT))
        split[p] = next((s for s in (*HELD_OUT, "train") if s in got), None)
    train = [p for p in paths if split[p] == "train"]
    validation = [p for p in paths if split[p] == "validation"]
    test = tuple(p for p in paths if split[p] == "test")
    unassigned = tuple(p for p in paths if split[p] is None)
    note, last = "", False
    if val is not None:
        validation = [p for p in paths if fnmatch.fnmatchcase(p, val)]
        chosen = set(validation)
        train, test = [p for p in train if p not in chosen], tuple(p for p in test if p not in chosen)
        unassigned = tuple(p for p in unassigned if p not in chosen)
    elif not validation and test:
        validation = list(test)
        note = f"no validation split: using its {len(test)} test file(s) for validation"
    elif not validation and len(train) >= 2:
        validation, train, last = train[-1:], train[:-1], True
        note = f"no validation or test split: holding out the last train file, {validation[0]}, for validation"
    elif not validation and train:
        note = (f"one train file and no validation or test split: training on {train[0]}; there is no "
                "validation split (pass --val GLOB to choose one)")
    return Assignment(tuple(train), tuple(validation), test, unassigned, rule, note, last)
