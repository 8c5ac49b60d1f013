"""Which split each file of a dataset is in: Hugging Face ``datasets``' inference, then nanostream's fallbacks
(docs/datasets.md#splits-and-the-text-column). Pure functions over relative file paths.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

SPLIT_KEYWORDS = {  # datasets.data_files.SPLIT_KEYWORDS
    "train": ("train", "training"),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test", "testing", "eval", "evaluation"),
}
SPLIT_OF_KEYWORD = {word: split for split, words in SPLIT_KEYWORDS.items() for word in words}
SEP = "[-._ 0-9]"  # datasets.data_files.NON_WORDS_CHARS
SHARDED = re.compile(r"^data/(?P<split>[^/]+)-[0-9]{5}-of-[0-9]{5}[^/]*\.[^/]*$")
HELD_OUT = ("validation", "test")  # a file in several splits goes to the first of these it is in
T = TypeVar("T")
RULES = {1: "data/{split}-NNNNN-of-NNNNN file names", 2: "split folder names", 3: "split words in file names",
         4: "no split names (every file is train)"}


def _keyword_regexes(rule: int, fold: bool) -> dict[str, re.Pattern[str]]:
    """Per split, its keywords as a folder name (rule 2: up to the folder's end) or a part of a file name (3)."""
    tail = f"(?:{SEP}|$)" if rule == 2 else SEP
    flags = re.IGNORECASE if fold else 0
    return {split: re.compile(rf"(?:^|{SEP})(?:{'|'.join(words)}){tail}", flags)
            for split, words in SPLIT_KEYWORDS.items()}


_KEYWORD_REGEXES = {(rule, fold): _keyword_regexes(rule, fold) for rule in (2, 3) for fold in (False, True)}


def _sharded_split(path: str) -> str | None:
    """The split name of a ``data/{split}-NNNNN-of-NNNNN*.*`` path (as written), or None."""
    m = SHARDED.match(path)
    return m["split"] if m else None


def _named_splits(path: str, rule: int, fold: bool) -> set[str]:
    """The splits whose keywords name one of ``path``'s folders (rule 2) or its file name (rule 3)."""
    parts = path.split("/")
    pieces = parts[:-1] if rule == 2 else parts[-1:]
    return {split for split, regex in _KEYWORD_REGEXES[(rule, fold)].items() if any(map(regex.search, pieces))}


def infer(paths: Sequence[str], *, fold: bool = True) -> tuple[int, dict[str, set[str]]]:
    """``datasets``' rule (1-4) for these paths and the splits it puts each path in (empty: left out).
    Rule 1's names are mapped to train/validation/test by keyword (other names: left out)."""
    named = {p: _sharded_split(p) for p in paths}
    if any(named.values()):
        return 1, {p: {SPLIT_OF_KEYWORD[n]} if n in SPLIT_OF_KEYWORD else set() for p, n in named.items()}
    for rule in (2, 3):
        found = {p: _named_splits(p, rule, fold) for p in paths}
        if any(found.values()):
            return rule, found
    return 4, {p: {"train"} for p in paths}


@dataclass(frozen=True)
class Splits(Generic[T]):
    """The files of each split (paths, or a catalog's ``DataFile``s, in order), and how they were chosen."""

    train: tuple[T, ...]
    validation: tuple[T, ...]  # empty only for a one-file dataset (asking for it is an error)
    test: tuple[T, ...]
    unassigned: tuple[T, ...]  # left out: no split under the rule that applied, or a split of another name
    rule: int  # the inference rule that applied: 1-4 (RULES)
    note: str = ""  # the fallback that gave the validation split, "" when the files named it
    left_out: str = ""  # what is in no split and why, "" when every file is in one


def assign(paths: Sequence[str], val: str | None = None) -> Splits[str]:
    """Every path's split: ``datasets``' inference (case-insensitive keywords, and never train on what
    ``datasets`` holds out), then the ``val`` glob or the fallbacks of docs/datasets.md."""
    rule, ours = infer(paths, fold=True)
    _, exact = infer(paths, fold=False)
    split: dict[str, str | None] = {}
    for p in paths:
        got = ours[p] | (exact[p] & set(HELD_OUT))
        split[p] = next((s for s in (*HELD_OUT, "train") if s in got), None)
        if val is not None and fnmatch.fnmatchcase(p, val):
            split[p] = "validation"
        elif val is not None and split[p] == "validation":
            split[p] = "not chosen"  # the glob alone chooses validation: in no split
    of = {name: [p for p in paths if split[p] == name] for name in (*SPLIT_KEYWORDS, None)}
    train, validation, test, note = of["train"], of["validation"], of["test"], ""
    if val is None and not validation:  # no file named validation: the fallbacks
        if test:
            validation = test
            note = f"no validation split: using its {len(test)} test file(s) for validation"
        elif len(train) >= 2:
            validation, train = train[-1:], train[:-1]
            note = f"no validation or test split: holding out the last train file, {validation[0]}, for validation"
        elif train:
            note = (f"one train file and no validation or test split: training on {train[0]}; there is no "
                    "validation split (pass --val GLOB to choose one)")
    left_out, unassigned = "", of[None]
    if unassigned:  # a rule 1 split of another name (data/random-00000-of-00001.parquet), or no split word
        other = sorted({n for n in map(_sharded_split, unassigned) if n and n not in SPLIT_OF_KEYWORD})
        why = f" (splits {', '.join(other)})" if other else ""
        left_out = (f"{len(unassigned)} file(s) are in no train, validation or test split by {RULES[rule]}{why} "
                    f"and are left out, e.g. {unassigned[0]}")
    return Splits(tuple(train), tuple(validation), tuple(test), tuple(unassigned), rule, note, left_out)
