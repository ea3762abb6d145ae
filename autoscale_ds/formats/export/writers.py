"""Writers: one function per framework that renders checked weights through the paths map.

Floats are written with ``repr`` so a weight read back is bit-for-bit the one written. Every
Megatron-family output is safe for its documented use, or refused naming the domain and path:
``megatron`` (pasted, or ``$(cat FILE)`` unquoted) only takes paths no shell interprets;
``megatron-data-args`` (read with ``split()``) no whitespace; ``megatron-deepspeed`` is a bash
array to ``source``, every path quoted; command lines take no path starting with '-'.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shlex
from typing import Any, Mapping, NamedTuple

import yaml

from autoscale_ds.formats.datapaths import SPLITS, Blend, DataPaths, _is_number
from autoscale_ds.errors import InputError
from autoscale_ds.loaders import QuotingDumper

log = logging.getLogger(__name__)


def _num(value: float) -> str:
    return repr(float(value))  # shortest string that reads back as the same double


def _check_weights(weights: Mapping[str, float], paths: DataPaths) -> dict[str, float]:
    """Validate a mixture against the map; return it as floats summing to 1, same order."""
    if not isinstance(weights, Mapping):
        raise InputError(f"the mixture must map domain -> weight, got {type(weights).__name__}")
    if not weights:
        raise InputError("the mixture has no domains")
    out: dict[str, float] = {}
    for domain, w in weights.items():
        if not _is_number(w) or not math.isfinite(w) or w < 0:
            raise InputError(f"mixture weight of domain {domain!r} must be a finite number >= 0, got {w!r}")
        if domain not in paths.by_domain:
            raise InputError(f"mixture domain {domain!r} has no entry in data-paths file {paths.source}; "
                             f"add it (the file has: {', '.join(paths.domains)})")
        out[domain] = float(w)
    extra = [d for d in paths.domains if d not in out]
    if extra:
        log.warning("data-paths file %s has domains the mixture lacks (not exported): %s",
                    paths.source, ", ".join(extra))
    total = math.fsum(out.values())
    if total <= 0:
        raise InputError("all mixture weights are 0; nothing to export")
    if abs(total - 1.0) > 1e-12:
        if abs(total - 1.0) > 1e-6:
            log.warning("mixture weights sum to %r, not 1; normalising", total)
        out = {d: w / total for d, w in out.items()}
    return out


def _blend(weights: Mapping[str, float], paths: DataPaths, split: str = "train") -> Blend:
    """Per-path weights for one split. Zero-weight domains are dropped: Megatron and
    others build a dataset per listed prefix and fail or waste work on a 0-sample one.
    Non-train splits cover only domains that have them, so they are renormalised."""
    blend = [(p, w * share) for d, w in weights.items() if w > 0 for p, share in paths.shards(d, split)]
    if split == "train" or not blend:
        return blend
    total = math.fsum(w for _, w in blend)
    return [(p, w / total) for p, w in blend]


def _split_blends(weights: Mapping[str, float], paths: DataPaths, fmt: str) -> dict[str, Blend]:
    """Blends of the splits the map has; an eval split left empty by zero weights is dropped."""
    out: dict[str, Blend] = {}
    for split in SPLITS:
        if paths.has_split(split):
            out[split] = _blend(weights, paths, split)
            if not out[split]:
                log.warning("%s: every domain with %s paths has weight 0; %s split not exported",
                            fmt, split, split)
                del out[split]
    return out


def _train_only(weights: Mapping[str, float], paths: DataPaths, fmt: str) -> Blend:
    if paths.has_split("valid") or paths.has_split("test"):
        log.warning("%s carries only the train split; valid/test paths of %s are not exported "
                    "(megatron-per-split, megatron-deepspeed and gpt-neox carry them)", fmt, paths.source)
    return _blend(weights, paths)


# What each Megatron-family output can carry. A prefix is refused, naming its domain, when
# the documented way of use would not hand Megatron exactly that string.
_SHELL_INERT = re.compile(r"[\w@%+=:,./-]*")  # no quoting needed in sh/bash (\w: any script)


def _refuse(fmt: str, path: str, paths: DataPaths, why: str, instead: str) -> None:
    domain = paths.domain_of_path()[path]
    raise InputError(f"{fmt}: path {path!r} of domain {domain!r} (data-paths file {paths.source}) "
                     f"{why}; {instead}")


def _no_whitespace(blend: Blend, paths: DataPaths, fmt: str) -> Blend:
    # Megatron-LM reads --data-args-path as f.read().split(): whitespace splits a prefix.
    for path, _ in blend:
        if any(c.isspace() for c in path):
            _refuse(fmt, path, paths, "contains whitespace, which Megatron splits prefixes on",
                    "rename it, or use --format megatron-per-split (JSON lists keep it)")
    return blend


def _no_leading_dash(blend: Blend, paths: DataPaths, fmt: str) -> Blend:
    # argparse takes a value that starts with '-' for an option (or an abbreviation of one).
    for path, _ in blend:
        if path.startswith("-"):
            _refuse(fmt, path, paths, "starts with '-', so Megatron's argparse would read it as an "
                    "option", "write it as ./" + path + " or use --format megatron-data-args")
    return blend


def _shell_inert(blend: Blend, paths: DataPaths, fmt: str) -> Blend:
    # The `megatron` line is pasted or spliced unquoted ($(cat FILE)): any character the shell
    # interprets ($ ` ' " \\ ; & | < > ( ) * ? [ ~ # ! { } whitespace ...) would change the argv.
    for path, _ in _no_leading_dash(blend, paths, fmt):
        if not _SHELL_INERT.fullmatch(path):
            bad = next(c for c in path if not _SHELL_INERT.fullmatch(c))
            _refuse(fmt, path, paths, f"contains {bad!r}, which a shell interprets on a command line",
                    "use --format megatron-data-args (a file Megatron reads itself) or "
                    "megatron-deepspeed (a bash array with every path quoted)")
    return blend


def _flat(blend: Blend) -> list[str]:
    return [tok for path, w in blend for tok in (_num(w), path)]


def _yaml(comment: str, obj: Any) -> str:
    lines = "".join(f"# {line}\n" for line in comment.splitlines())
    body = yaml.dump(obj, Dumper=QuotingDumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True)
    return lines + body


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, allow_nan=False) + "\n"


class Options(NamedTuple):
    """What an exporter needs besides the weights and the paths map."""

    seed: int = 0
    """Sampling seed written where the target takes one (hf, litdata)."""
    epoch_cap: dict[str, float] = {}
    """Per domain, passes over its train data the mixture allows (olmo-core)."""
    epoch_cap_source: str = ""
    """Where ``epoch_cap`` comes from, written into the output."""
    total_tokens: float | None = None
    """The mixture's token budget, to check ``epoch_cap`` against the data (olmo-core)."""


def _export_megatron(w: Mapping[str, float], p: DataPaths, o: Options) -> str:
    # Megatron-LM --data-path (megatron.core.datasets.utils.get_blend_from_list), pasted or
    # spliced unquoted: every token must reach argv unchanged.
    return " ".join(_flat(_shell_inert(_train_only(w, p, "megatron"), p, "megatron"))) + "\n"


def _export_megatron_data_args(w: Mapping[str, float], p: DataPaths, o: Options) -> str:
    # Megatron-LM --data-args-path: read as f.read().split(), so no comments are possible.
    blend = _no_whitespace(_train_only(w, p, "megatron-data-args"), p, "megatron-data-args")
    return "".join(f"{_num(weight)} {path}\n" for path, weight in blend)


def _export_megatron_per_split(w: Mapping[str, float], p: DataPaths, o: Options) -> str:
    # Megatron-LM --per-split-data-args-path: all three keys are read; null means "no such
    # split" (get_blend_from_list(None) -> None), whereas an empty list crashes it. Lists are
    # used as they are (only a string is split), so any prefix survives.
    blends = _split_blends(w, p, "megatron-per-split")
    return _json({s: _flat(blends[s]) if s in blends else None for s in SPLITS})


DEEPSPEED_ARRAY = "DATA_ARGS"


def _export_megatron_deepspeed(w: Mapping[str, float], p: DataPaths, o: Options) -> str:
    # Megatron-DeepSpeed --data-path (or --{train,valid,test}-data-path), nargs='*' pairs,
    # as a bash array: `source` the file, pass "${DATA_ARGS[@]}". Each element is quoted
    # (shlex.quote: single quotes, inside which bash expands nothing), so any path except
    # one argparse takes for an option reaches argv as it is.
    blends = _split_blends(w, p, "megatron-deepspeed")
    for blend in blends.values():
        _no_leading_dash(blend, p, "megatron-deepspeed")
    if p.has_split("valid") or p.has_split("test"):
        groups = [(f"--{s}-data-path", b) for s, b in blends.items()]
    else:  # one blend, cut up by --split
        groups = [("--data-path", blends["train"])]
    lines = [f"  {flag}" + "".join(f"\n    {_num(wt)} {shlex.quote(path)}" for path, wt in b)
             for flag, b in groups]
    return (f"# Megatron-DeepSpeed data arguments. Use: source THIS_FILE; "
            f'pretrain_gpt.py ... "${{{DEEPSPEED_ARRAY}[@]}}"\n'
            f"{DEEPSPEED_ARRAY}=(\n" + "\n".join(lines) + "\n)\n")


def _neox_fill(blends: dict[str, Blend]) -> list[str]:
    """GPT-NeoX requires all three splits. A missing test split reuses valid (held-out data
    measures held-out loss); a missing valid reuses test, else train. Returns the notes."""
    notes = []
    for split, donors in (("valid", ("test", "train")), ("test", ("valid", "train"))):
        if split not in blends:
            donor = next(d for d in donors if d in blends)
            log.warning("gpt-neox needs %s-data-paths; the paths map has none, so it reuses the "
                        "%s paths", split, donor)
            notes.append(f"{split} reuses the {donor} paths (the paths map gives no {split} paths)")
            blends[split] = blends[donor]
    return notes


def _export_gpt_neox(w: Mapping[str, float], p: DataPaths, o: Options) -> str:
    # GPT-NeoX neox_args train/valid/test-data-paths + -data-weights (all three required).
    blends = _split_blends(w, p, "gpt-neox")
    notes = _neox_fill(blends)
    note = "; ".join(["GPT-NeoX data config (neox_args: {train,valid,test}-data-paths / -data-weights)",
                      *notes])
    obj: dict[str, list] = {}
    for split in SPLITS:
        obj[f"{split}-data-paths"] = [path for path, _ in blends[split]]
        obj[f"{split}-data-weights"] = [weight for _, weight in blends[split]]
    return _yaml(note, obj)


def _mean_document_tokens(blend: Blend, p: DataPaths) -> list[float] | None:
    """Mean document length of each path's domain, or None unless every one is known."""
    owner = p.domain_of_path()
    stats = [p.train_stats.get(owner[path]) for path, _ in blend]
    return None if any(s is None for s in stats) else [s.mean_document_tokens for s in stats]


def _export_hf(w: Mapping[str, float], p: DataPaths, o: Options) -> str:
    # datasets.interleave_datasets(datasets, probabilities, seed, stopping_strategy) draws one
    # *example* at a time, while our weights are token fractions: a domain of long documents
    # would get more tokens than its weight. probability ~ weight / mean document tokens.
    blend = _train_only(w, p, "hf")
    lengths = _mean_document_tokens(blend, p)
    if lengths is None:
        log.warning("hf: document lengths of %s are unknown, so the probabilities are the token "
                    "weights themselves; a domain's token share will follow its mean document "
                    "length. Give a domains manifest (as the paths map, or load_data_paths(..., "
                    "manifest=...)) to convert.", p.source)
        per_example = [weight for _, weight in blend]
        what = ("token weights, unconverted: document lengths unknown (no domains manifest), "
                "so each domain's token share scales with its mean document length")
    else:
        per_example = [weight / length for (_, weight), length in zip(blend, lengths)]
        what = ("per example: token weight / mean document tokens (mean_document_tokens, from "
                f"domains manifest {p.source}), renormalised")
    total = math.fsum(per_example)
    obj = {"datasets": [path for path, _ in blend],
           "probabilities": [x / total for x in per_example],
           "seed": o.seed, "stopping_strategy": "first_exhausted", "probabilities_are": what}
    if lengths is not None:
        obj["mean_document_tokens"] = lengths
    return _json(obj)


def _export_mosaicml(w: Mapping[str, float], p: DataPaths, o: Options) -> str:
    # MosaicML streaming.Stream(remote|local, proportion); llm-foundry dataset.streams.
    blend, owner = _train_only(w, p, "mosaicml"), p.domain_of_path()
    streams: dict[str, dict[str, Any]] = {}
    for domain in dict.fromkeys(owner[path] for path, _ in blend):
        shards = [(path, weight) for path, weight in blend if owner[path] == domain]
        for k, (path, weight) in enumerate(shards):
            name = domain if len(shards) == 1 else f"{domain}_{k}"
            while name in streams:  # stream names are keys: keep them unique
                name += "_"
            streams[name] = {"remote" if "://" in path else "local": path, "proportion": weight}
    return _yaml("MosaicML streaming StreamingDataset(streams=[Stream(**s) for s in streams.values()]); "
                 "llm-foundry: paste under train_loader.dataset", {"streams": streams})


def _export_litdata(w: Mapping[str, float], p: DataPaths, o: Options) -> str:
    # litdata.CombinedStreamingDataset(datasets=[StreamingDataset(input_dir=...)], seed=...,
    # weights=..., iterate_over_all=False). Its weights are per item: with litdata's
    # TokensLoader (as litgpt pretrains) an item is a fixed-size token block, so token weights.
    blend = _train_only(w, p, "litdata")
    return _json({"datasets": [{"input_dir": path} for path, _ in blend],
                  "weights": [weight for _, weight in blend], "seed": o.seed,
                  "iterate_over_all": False})


def _export_nanotron(w: Mapping[str, float], p: DataPaths, o: Options) -> str:
    # nanotron NanosetDatasetsArgs(dataset_folder=[...], dataset_weights=[...]); the older
    # {folder: weight} form is rejected by current nanotron's strict config loading.
    blend = _train_only(w, p, "nanotron")
    body = {"dataset": {"dataset_folder": [path for path, _ in blend],
                        "dataset_weights": [weight for _, weight in blend]}}
    return _yaml("nanotron NanosetDatasetsArgs; paste under data_stages[*].data", body)


def _olmo_source(domain: str, weight: float, p: DataPaths, o: Options) -> dict[str, Any]:
    # OLMo-core takes at most available * max_source_fraction * max_repetition_ratio tokens of a
    # source (the ratio must be >= 1, the fraction in (0, 1]): an epoch cap E is ratio E when
    # E >= 1, fraction E when E < 1. No cap known: 1.0, OLMo-core's default (no repetition).
    cap = o.epoch_cap.get(domain, 1.0)
    source = {"source_name": domain, "target_ratio": weight, "paths": [path for path, _ in p.shards(domain)],
              "max_repetition_ratio": max(1.0, cap)}
    if cap < 1.0:
        source["max_source_fraction"] = cap
    stats = p.train_stats.get(domain)
    if stats is not None and o.total_tokens is not None and weight * o.total_tokens > cap * stats.tokens:
        log.warning("olmo-core: domain %r needs %.3g passes over its %d train tokens at %.4g tokens, "
                    "more than the %g allowed (%s); OLMo-core will refuse it (Insufficient tokens)",
                    domain, weight * o.total_tokens / stats.tokens, stats.tokens, o.total_tokens, cap,
                    o.epoch_cap_source or "no epoch cap known")
    return source


def _export_olmo_core(w: Mapping[str, float], p: DataPaths, o: Options) -> str:
    # OLMo-core SourceMixtureList.from_yaml -> SourceMixtureDatasetConfig(source_list=...).
    # OLMo-core draws a source's tokens from its paths by token count, so shares are not written.
    _train_only(w, p, "olmo-core")
    sources = [_olmo_source(d, weight, p, o) for d, weight in w.items() if weight > 0]
    cap = o.epoch_cap_source or ("no epoch cap in the mixture: 1.0, OLMo-core's default "
                                 "(each source read at most once)")
    return _yaml("OLMo-core SourceMixtureList (SourceMixtureConfig: source_name, target_ratio, paths, "
                 f"max_repetition_ratio)\nmax_repetition_ratio: {cap}", {"sources": sources})

