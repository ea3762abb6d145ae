"""Tabular sources of a domain: Parquet and Arrow files, and Hugging Face
``datasets.save_to_disk`` directories (a ``Dataset``, or the splits of a ``DatasetDict``).

Both optional readers (pyarrow, datasets) are imported only when such a source is met, with an
install hint when they are missing. :mod:`autoscale_ds.data.sources` dispatches here by suffix
or directory layout. ``spec`` below is a ``sources.DomainSpec`` and ``domain`` a
``sources.ResolvedDomain``; they are not imported, since ``sources`` imports this module.
"""

import logging
from pathlib import Path
from typing import Iterator, List

from ..errors import InputError

logger = logging.getLogger(__name__)

TABLE_SUFFIXES = (".parquet", ".arrow")
DATASET_BATCH_ROWS = 1024


def is_saved_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def is_dataset_dict(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file()



def dataset_split_dir(spec, directory: Path) -> Path:
    """The saved ``Dataset`` of the chosen split of a ``DatasetDict`` directory."""
    splits = _dataset_splits(spec.name, directory)
    split = _training_split(spec, directory, splits)
    unused = [s for s in splits if s not in (split, spec.valid_split)]
    if spec.valid_split is None and unused:
        logger.info("domain %r: %s also has split(s) %s; --valid-split NAME holds one out for "
                    "validation instead of a random share of %r", spec.name, directory, unused,
                    split)
    dataset = load_dataset(spec.name, directory)[split]
    _check_text_column(spec, directory / split, dataset)
    return directory / split


def _training_split(spec, directory: Path, splits: List[str]) -> str:
    split = spec.split
    if split is None:
        split = "train" if "train" in splits or len(splits) != 1 else splits[0]
    if split not in splits:
        raise InputError(f"domain {spec.name!r}: {directory} has no split {split!r} (splits: "
                         f"{splits}); choose one with --split")
    return split


def valid_split_dirs(spec) -> List[Path]:
    directories = [Path(s) for s in spec.sources if is_dataset_dict(Path(s))]
    if not directories:
        raise InputError(f"domain {spec.name!r}: --valid-split {spec.valid_split!r} needs a "
                         "DatasetDict source (a datasets.save_to_disk directory with splits)")
    chosen = []
    for directory in directories:
        splits = _dataset_splits(spec.name, directory)
        if spec.valid_split not in splits:
            raise InputError(f"domain {spec.name!r}: {directory} has no split "
                             f"{spec.valid_split!r} (splits: {splits}); fix --valid-split")
        if spec.valid_split == _training_split(spec, directory, splits):
            raise InputError(f"domain {spec.name!r}: split {spec.valid_split!r} of {directory} "
                             "cannot be both the training split and the validation split")
        _check_text_column(spec, directory / spec.valid_split,
                           load_dataset(spec.name, directory)[spec.valid_split])
        chosen.append(directory / spec.valid_split)
    return chosen


def _dataset_splits(domain: str, directory: Path) -> List[str]:
    return list(load_dataset(domain, directory).keys())


def load_dataset(domain: str, directory: Path):
    """``datasets.load_from_disk``: memory-maps the Arrow files, reads no rows yet."""
    try:
        import datasets
    except ImportError:
        raise InputError(f"domain {domain!r}: reading the datasets.save_to_disk directory "
                         f"{directory} needs `datasets`: pip install 'autoscale-ds[hf]'") from None
    try:
        return datasets.load_from_disk(str(directory))
    except (OSError, ValueError, KeyError) as exc:  # pyarrow's errors derive from these
        raise InputError(f"domain {domain!r}: cannot load the saved dataset {directory}: "
                         f"{exc}") from None


def check_dataset_column(spec, directory: Path) -> None:
    _check_text_column(spec, directory, load_dataset(spec.name, directory))


def _check_text_column(spec, where: Path, dataset) -> None:
    if spec.field not in dataset.column_names:
        raise InputError(f"domain {spec.name!r}: {where} has no column {spec.field!r} "
                         f"(columns: {dataset.column_names}); choose it with --field")
    dtype = getattr(dataset.features[spec.field], "dtype", None)
    if dtype not in ("string", "large_string"):
        raise InputError(f"domain {spec.name!r}: {where}: column {spec.field!r} holds "
                         f"{dataset.features[spec.field]}, not text; choose a text column with "
                         "--field")


def dataset_documents(domain, directory: Path) -> Iterator[str]:
    key = domain.spec.field
    dataset = load_dataset(domain.spec.name, directory).select_columns([key])
    row = 0
    for table in dataset.with_format("arrow").iter(batch_size=DATASET_BATCH_ROWS):
        for value in table.column(key).to_pylist():
            if value is None:
                raise InputError(f"domain {domain.spec.name!r}: {directory}: row {row} has no "
                                 f"text in column {key!r} (null)")
            yield value
            row += 1


def table_documents(domain, path: Path) -> Iterator[str]:
    key = domain.spec.field
    for batch in arrow_batches(domain, path):
        if key not in batch.schema.names:
            raise InputError(f"domain {domain.spec.name!r}: {path} has no column {key!r} "
                             f"(columns: {batch.schema.names}); choose it with --field")
        for value in batch.column(key).to_pylist():
            if not isinstance(value, str):
                raise InputError(f"domain {domain.spec.name!r}: {path}: column {key!r} holds "
                                 f"{type(value).__name__}, not text")
            yield value


def arrow_batches(domain, path: Path):
    try:
        import pyarrow  # noqa: F401  (optional: the `data` extra)
    except ImportError:
        raise InputError(f"reading {path} needs pyarrow: pip install 'autoscale-ds[data]'") from None
    try:
        yield from _read_arrow(path)
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        raise InputError(f"domain {domain.spec.name!r}: cannot read {path}: {exc}") from None


def _read_arrow(path: Path):
    import pyarrow.parquet

    if path.suffix == ".parquet":
        yield from pyarrow.parquet.ParquetFile(path).iter_batches()
        return
    yield from _arrow_file_batches(path)


def _arrow_file_batches(file: Path):
    import pyarrow.ipc

    # `datasets` writes the streaming IPC format; other tools write the random-access one.
    try:
        reader = pyarrow.ipc.open_stream(pyarrow.memory_map(str(file)))
        yield from reader
    except pyarrow.ArrowInvalid:
        reader = pyarrow.ipc.open_file(pyarrow.memory_map(str(file)))
        for index in range(reader.num_record_batches):
            yield reader.get_batch(index)
