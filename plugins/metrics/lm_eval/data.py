"""Offline task data built from Python's own documentation text (`pydoc_data.topics`).

Four lm-eval tasks ship with the project as YAML templates under ``tasks/``; their data is
built here, deterministically, the first time it is needed, into a cache directory::

    >>> from harness_plugins.metrics.lm_eval.data import ensure_task_dir
    >>> task_dir = ensure_task_dir(Path("~/.cache/harness/lm_eval").expanduser())
    >>> sorted(p.name for p in task_dir.glob("*.yaml"))
    ['pydoc_cloze.yaml', 'pydoc_mc.yaml', 'pydoc_ppl.yaml', 'pydoc_word.yaml']

* ``pydoc_cloze``: LAMBADA-style last-word prediction. A passage of prose; the model must put
  the highest likelihood on its final word (acc = greedy match, plus perplexity).
* ``pydoc_mc``: HellaSwag-style continuation. The start of a paragraph and four candidate
  next sentences: the true one and three taken from *other* documents (acc, acc_norm).
* ``pydoc_ppl``: rolling perplexity over whole paragraphs (word/byte perplexity, bits/byte).
* ``pydoc_word``: which word comes next? The start of a paragraph and four candidate next
  words: the true one and three other words *of the same paragraph* (acc, acc_norm; chance
  0.25). Built so that tiny models trained on this corpus can learn it and sizes order on it
  (docs/lm_eval.md: why it measures what it claims).

The corpus is the stdlib's ``pydoc_data.topics`` (79 documents of the Python reference), so the
data needs no download and no file in the repository; the build is a pure function of that
text and the seed, and the directory name carries a hash of both (plus the builder version),
so a new Python version gives a new directory instead of silently different numbers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from importlib import resources
from pathlib import Path
from typing import Any

from harness.atomic import atomic_dir

logger = logging.getLogger(__name__)

#: bump when the builders change what they produce
BUILDER_VERSION = "2"
OFFLINE_TASKS = ("pydoc_cloze", "pydoc_mc", "pydoc_ppl", "pydoc_word")
DATA_PLACEHOLDER = "@DATA_DIR@"
SEED = 1234

_WS = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"(])")


def corpus() -> dict[str, str]:
    """The source documents: topic name -> text (stdlib, always present)."""
    import pydoc_data.topics as topics

    return dict(sorted(topics.topics.items()))


def prose_paragraphs(text: str, min_words: int = 12) -> list[str]:
    """Paragraphs of running prose: no headings, no indented code or grammar blocks."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if not lines or any(ln.startswith((" ", "\t")) for ln in lines):
            continue  # code, grammar productions, quoted blocks
        if len(lines) >= 2 and set(lines[-1].strip()) <= set("*=-~^"):
            continue  # heading with underline
        para = _WS.sub(" ", " ".join(lines)).strip()
        if len(para.split()) >= min_words and para[-1:] in ".!?:":
            out.append(para)
    return out


def sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(paragraph) if s.strip()]


def corpus_hash() -> str:
    h = hashlib.sha256()
    for name, text in corpus().items():
        h.update(name.encode())
        h.update(b"\0")
        h.update(text.encode())
    return h.hexdigest()[:12]


# ---- the three builders ---------------------------------------------------------------


def build_cloze(docs: dict[str, str], max_words: int = 60) -> list[dict[str, Any]]:
    """Last-word items: ``context`` (passage minus its last word) and ``target`` (" word").

    A passage is the longest run of whole sentences (at most ``max_words`` words) at the start
    of a paragraph; its last word has trailing punctuation stripped (as LAMBADA's targets are
    bare words) and must be alphabetic and at least 3 letters, so the task is not "predict '.'".
    """
    items = []
    for name, text in docs.items():
        for i, para in enumerate(prose_paragraphs(text)):
            words: list[str] = []
            for sent in sentences(para):
                if words and len(words) + len(sent.split()) > max_words:
                    break
                words += sent.split()
            if len(words) < 8:
                continue
            last = words[-1].rstrip(".!?:;,)\"'")
            if not (last.isalpha() and len(last) >= 3):
                continue
            items.append({"id": f"{name}/{i}", "context": " ".join(words[:-1]), "target": " " + last})
    return items


def build_mc(docs: dict[str, str], n_choices: int = 4, seed: int = SEED) -> list[dict[str, Any]]:
    """Continuation items: ``context`` (first sentence(s)), ``choices`` and ``label``.

    The true ending is the paragraph's next sentence; distractors are sentences of paragraphs
    from *other* documents (so they are fluent but off-topic), drawn with a seeded RNG.
    """
    rng = random.Random(seed)
    pool: list[tuple[str, str]] = []  # (doc, sentence)
    cand = []
    for name, text in docs.items():
        for i, para in enumerate(prose_paragraphs(text)):
            sents = sentences(para)
            pool += [(name, s) for s in sents if 5 <= len(s.split()) <= 30]
            if len(sents) >= 2 and 5 <= len(sents[1].split()) <= 30:
                cand.append((name, i, sents[0], sents[1]))
    items = []
    for name, i, ctx, ending in cand:
        others = sorted({s for d, s in pool if d != name and s not in (ending, ctx)})
        distractors = rng.sample(others, n_choices - 1)
        label = rng.randrange(n_choices)
        choices = distractors[:label] + [ending] + distractors[label:]
        items.append({"id": f"{name}/{i}", "context": ctx, "choices": [" " + c for c in choices], "label": label})
    return items


def build_ppl(docs: dict[str, str]) -> list[dict[str, Any]]:
    """Perplexity items: every prose paragraph of every document (``text``)."""
    return [
        {"id": f"{name}/{i}", "text": para}
        for name, text in docs.items()
        for i, para in enumerate(prose_paragraphs(text, min_words=20))
    ]


def build_word(docs: dict[str, str], n_choices: int = 4, seed: int = SEED, min_pos: int = 8,
               max_pos: int = 40) -> list[dict[str, Any]]:
    """Next-word items: ``context`` (a paragraph's first words), ``choices`` (" word") and ``label``.

    Per prose paragraph of at least 16 words, one position ``pos`` in [min_pos, min(len, max_pos))
    is drawn with a seeded RNG; the true choice is the word there (alphabetic, >= 3 letters, else
    the paragraph gives no item), the distractors are other such words *of the same paragraph*
    (case-insensitively different from it). Same paragraph means same topic and same vocabulary,
    so neither the subject nor a word's frequency in the document gives the answer away: the
    model must know which of these words continues this text here (syntax and local meaning).
    Documents are visited last-first, so the first items (lm-eval's ``limit`` takes the first)
    come from the documents at the end of the corpus, which the ``val`` split of a build with
    ``val_fraction >= 0.1`` holds out (docs/lm_eval.md).
    """
    rng = random.Random(seed)
    items = []
    for name in sorted(docs, reverse=True):
        for i, para in enumerate(prose_paragraphs(docs[name])):
            words = para.split()
            if len(words) < 2 * min_pos:
                continue
            pos = rng.randrange(min_pos, min(len(words), max_pos))
            target = words[pos]
            if not (target.isalpha() and len(target) >= 3):
                continue
            pool: dict[str, str] = {}  # one spelling per word, case-insensitively (first seen)
            for w in words:
                if w.isalpha() and len(w) >= 3 and w.lower() != target.lower():
                    pool.setdefault(w.lower(), w)
            pool_words = sorted(pool.values())
            if len(pool_words) < n_choices - 1:
                continue
            distractors = rng.sample(pool_words, n_choices - 1)
            label = rng.randrange(n_choices)
            choices = distractors[:label] + [target] + distractors[label:]
            items.append({"id": f"{name}/{i}", "context": " ".join(words[:pos]),
                          "choices": [" " + c for c in choices], "label": label})
    return items


BUILDERS = {"pydoc_cloze": build_cloze, "pydoc_mc": build_mc, "pydoc_ppl": build_ppl, "pydoc_word": build_word}


# ---- materialise task dir ---------------------------------------------------------------


def _templates() -> dict[str, str]:
    root = resources.files(__package__).joinpath("tasks")
    return {p.name: p.read_text(encoding="utf-8") for p in root.iterdir() if p.name.endswith(".yaml")}


def task_dir_name() -> str:
    h = hashlib.sha256(corpus_hash().encode())
    h.update(BUILDER_VERSION.encode())
    for name, text in sorted(_templates().items()):
        h.update(name.encode() + text.encode())
    return f"pydoc-{h.hexdigest()[:12]}"


def default_cache_root() -> Path:
    """``$HARNESS_CACHE/lm_eval`` or ``~/.cache/harness/lm_eval`` (the runner's cache root)."""
    base = os.environ.get("HARNESS_CACHE") or os.path.join(os.path.expanduser("~/.cache"), "harness")
    return Path(base) / "lm_eval"


def ensure_task_dir(cache_root: Path | None = None) -> Path:
    """Build (once) and return the include_path holding the offline task YAMLs and their data.

    The directory is written under a temporary name and renamed into place, so a concurrent
    or killed build never leaves a half-written task directory behind.
    """
    cache_root = Path(cache_root) if cache_root else default_cache_root()
    target = cache_root / task_dir_name()
    if (target / "COMPLETE").exists():
        return target
    with atomic_dir(target, replace=False) as tmp:  # another process finished first: theirs is identical
        docs = corpus()
        counts = {}
        for task, builder in BUILDERS.items():
            items = builder(docs)
            counts[task] = len(items)
            with open(tmp / f"{task}.jsonl", "w", encoding="utf-8") as fh:
                for item in items:
                    fh.write(json.dumps(item, sort_keys=True) + "\n")
        for name, text in _templates().items():
            (tmp / name).write_text(text.replace(DATA_PLACEHOLDER, str(target)), encoding="utf-8")
        (tmp / "COMPLETE").write_text(json.dumps({"counts": counts, "corpus": corpus_hash()}, sort_keys=True))
    logger.info("built offline lm-eval tasks in %s (%s)", target, counts)
    return target
