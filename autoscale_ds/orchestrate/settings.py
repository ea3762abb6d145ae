"""Checks of sweep and pipeline settings: every field, every section, before any run.

A wrong setting found after the proxy runs wastes their training, so sweeps and pipelines
build every object their later stages need (DDO options, prediction guards, exports) from
the config first, and report every problem at once: one line that names the config file
and, for each problem, the field (``ddo.max_ratio: ...``).
"""

import argparse
import difflib
import logging
import math
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from ..errors import InputError

DDO_EXTRA_KEYS = ("noise_sigma", "sensitivity_draws", "noise_aware")
"""Keys of a `ddo:` section that are not DDOOptions: they drive the sensitivity report and
the noise-aware weights."""
PREDICT_KEYS = ("floor", "ceiling", "max_change_per_doubling", "max_epochs", "hold_unmeasured",
                "noise_aware")
EXPORT_KEYS = ("formats", "data_paths")


class ConfigProblems(InputError):
    """Every problem of one config, each ``field: what is wrong``, as one line."""

    def __init__(self, origin: str, problems: Sequence[str]):
        self.origin = origin
        self.problems = list(dict.fromkeys(problems))  # budgets share settings: say each once
        super().__init__(f"{origin}: " + "; ".join(self.problems))

    def named(self, origin: str) -> "ConfigProblems":
        return ConfigProblems(origin, self.problems)


def one_line(message: Any) -> str:
    """An error message as one line (list-style messages become ``a: x; y``)."""
    text = str(message).replace(":\n  - ", ": ").replace("\n  - ", "; ")
    return " ".join(text.split())


class Problems:
    """Collects ``field: problem`` entries while a config is checked."""

    def __init__(self):
        self.items: List[str] = []

    def add(self, where: Optional[str], message: str) -> None:
        self.items.append(f"{where}: {message}" if where else message)

    def attempt(self, where: Optional[str], build: Callable, *args, **kwargs):
        """``build(*args, **kwargs)``, or None with its problems recorded under ``where``."""
        try:
            return build(*args, **kwargs)
        except ConfigProblems as exc:
            for problem in exc.problems:
                self.add(where, problem)
        except InputError as exc:
            self.add(where, one_line(exc))
        return None

    def raise_if_any(self, origin: str) -> None:
        if self.items:
            raise ConfigProblems(origin, self.items)


# ------------------------------------------------------------------ single values


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def token_count(problems: Problems, where: str, value: Any, allow_zero: bool = False) -> Optional[float]:
    """A positive number of tokens: a number, or text with a suffix such as ``10M``."""
    if is_number(value) and (value > 0 or (allow_zero and value == 0)):
        return value  # as given: the number is recorded in provenance
    if isinstance(value, str):
        from ..console import parse_token_count

        try:
            return parse_token_count(value)
        except argparse.ArgumentTypeError:
            pass
    problems.add(where, f"must be a positive token count such as 5000000 or 5M, got {value!r}")
    return None


def positive_number(problems: Problems, where: str, value: Any, minimum: float = 0.0,
                    inclusive: bool = False) -> Optional[float]:
    if is_number(value) and (value >= minimum if inclusive else value > minimum):
        return value
    bound = f">= {minimum:g}" if inclusive else ("positive" if minimum == 0 else f"> {minimum:g}")
    problems.add(where, f"must be a number {bound}, got {value!r}")
    return None


def boolean(problems: Problems, where: str, value: Any) -> Optional[bool]:
    if isinstance(value, bool):
        return value
    problems.add(where, f"must be true or false, got {value!r}")
    return None


def text(problems: Problems, where: str, value: Any) -> Optional[str]:
    if isinstance(value, str) and value.strip():
        return value
    problems.add(where, f"must be a non-empty text, got {value!r}")
    return None


def mapping(problems: Problems, where: str, value: Any, example: str = "{key: value}") -> Dict[str, Any]:
    """``value`` if it is a mapping with text keys, else {} (and the problem recorded)."""
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return value
    problems.add(where, f"must be a mapping like {example}, got {value!r}")
    return {}


def text_list(problems: Problems, where: str, value: Any) -> Optional[List[str]]:
    """A non-empty list of distinct texts."""
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value) \
            and len(set(value)) == len(value):
        return value
    problems.add(where, f"must be a list of distinct names like [a, b], got {value!r}")
    return None


def unknown_keys(problems: Problems, where: str, section: dict, known: Iterable[str]) -> None:
    """A typo must never be silently ignored: each unknown key is a problem, with a hint."""
    known = list(known)
    for key in section:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            problems.add(f"{where}.{key}", f"unknown setting; {hint}known: {', '.join(known)}")


def train_section(problems: Problems, value: Any, example: str, known: Iterable[str],
                  reserved: Sequence[str], owner: str) -> None:
    """A `train:` section: a mapping of training settings (``known``), none of the keys that
    ``owner`` sets per run itself (``reserved``)."""
    train = mapping(problems, "train", value, example)
    taken = [k for k in train if k in reserved]
    if taken:
        problems.add("train", f"{taken} are set by {owner} itself; remove them")
    unknown_keys(problems, "train", {k: v for k, v in train.items() if k not in taken},
                 [name for name in known if name not in reserved])


def weight_map(problems: Problems, where: str, value: Any, low: float, high: float,
               low_open: bool, high_open: bool) -> Dict[str, float]:
    """{domain or "*": weight} within bounds; a bare number stands for {"*": number}."""
    if is_number(value):
        value = {"*": value}
    section = mapping(problems, where, value, '{"*": 0.02, code: 0.1} or 0.02')
    result = {}
    for domain, weight in section.items():
        fits = is_number(weight) and (weight > low if low_open else weight >= low) and \
            (weight < high if high_open else weight <= high)
        if fits:
            result[domain] = float(weight)
        else:
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            problems.add(f"{where}.{domain}", f"must be a weight in {interval}, got {weight!r}")
    return result


# ------------------------------------------------------------------------ sections


def _optional(check: Callable) -> Callable:
    return lambda problems, where, value: None if value is None else check(problems, where, value)


def _ratio_bounds(problems: Problems, where: str, value: Any) -> Dict[str, tuple]:
    bounds = {}
    for domain, pair in mapping(problems, where, value, "{code: [0.5, 2]}").items():
        if isinstance(pair, (list, tuple)) and len(pair) == 2 and all(is_number(v) for v in pair) \
                and 0 < pair[0] <= pair[1]:
            bounds[domain] = (float(pair[0]), float(pair[1]))
        else:
            problems.add(f"{where}.{domain}", f"must be [lo, hi] with 0 < lo <= hi, got {pair!r}")
    return bounds


def _available_tokens(problems: Problems, where: str, value: Any) -> Dict[str, float]:
    section = mapping(problems, where, value, "{code: 2M}")
    return {d: token_count(problems, f"{where}.{d}", n, allow_zero=True) for d, n in section.items()}


def _eval_weights(problems: Problems, where: str, value: Any) -> Dict[str, float]:
    section = mapping(problems, where, value, "{code: 2, web: 1}")
    weights = {}
    for domain, weight in section.items():
        if is_number(weight) and weight >= 0:
            weights[domain] = float(weight)
        else:
            problems.add(f"{where}.{domain}", f"must be a number >= 0, got {weight!r}")
    if section and weights and not any(weights.values()):
        problems.add(where, "needs at least one weight above 0")
    return weights


def _draws(problems: Problems, where: str, value: Any) -> Optional[int]:
    if is_whole(value) and (value == 0 or value >= 2):
        return value
    problems.add(where, f"must be 0 (off) or a whole number >= 2, got {value!r}")
    return None


_DDO_CHECKS: Dict[str, Callable] = {
    "metric": _optional(text),  # DDOOptions names the metrics it knows
    "eval_weights": _optional(_eval_weights),
    "min_ratio": _optional(positive_number),
    "max_ratio": _optional(positive_number),
    "ratio_bounds": _ratio_bounds,
    "available_tokens": _available_tokens,
    "max_epochs": positive_number,
    "base_run": _optional(text),
    "allow_incomplete": boolean,
    "allow_mixed_eval": boolean,
    "token_tolerance": lambda p, w, v: positive_number(p, w, v, minimum=0.0, inclusive=True),
    "noise_sigma": _optional(positive_number),
    "sensitivity_draws": _draws,
    "noise_aware": boolean,
}


def ddo_section(section: Any, where: str = "ddo") -> Dict[str, Any]:
    """A sweep's `ddo:` settings, typed (token counts like ``2M`` read); raises
    ConfigProblems naming each bad key."""
    from ..method.ddo import DDOOptions

    problems = Problems()
    section = mapping(problems, where, section, "{max_ratio: 3, noise_sigma: 0.02}")
    unknown_keys(problems, where, section,
                 [f.name for f in fields(DDOOptions)] + list(DDO_EXTRA_KEYS))
    settings = {key: _DDO_CHECKS[key](problems, f"{where}.{key}", value)
                for key, value in section.items() if key in _DDO_CHECKS}
    problems.raise_if_any("sweep config")
    return settings


def ddo_options(section: Any, where: str = "ddo"):
    """DDOOptions from a sweep's `ddo:` section (failed runs never sink a sweep, so
    ``allow_incomplete`` defaults to true there)."""
    from ..method.ddo import DDOOptions

    settings = {k: v for k, v in ddo_section(section, where).items() if k not in DDO_EXTRA_KEYS}
    settings.setdefault("allow_incomplete", True)
    problems = Problems()
    options = problems.attempt(where, DDOOptions, **settings)
    problems.raise_if_any("sweep config")
    return options


def predict_section(section: Any, where: str = "predict") -> Dict[str, Any]:
    """A pipeline's `predict:` settings, typed: floor/ceiling as {domain or "*": weight}
    (a bare number means every domain), max_change_per_doubling, max_epochs,
    hold_unmeasured, noise_aware. Raises ConfigProblems naming each bad key."""
    problems = Problems()
    section = mapping(problems, where, section, '{floor: {"*": 0.02}, max_change_per_doubling: 1.5}')
    unknown_keys(problems, where, section, PREDICT_KEYS)
    checks = {
        "floor": _optional(lambda p, w, v: weight_map(p, w, v, 0.0, 1.0, low_open=False, high_open=True)),
        "ceiling": _optional(lambda p, w, v: weight_map(p, w, v, 0.0, 1.0, low_open=True, high_open=False)),
        "max_change_per_doubling": _optional(
            lambda p, w, v: positive_number(p, w, v, minimum=1.0, inclusive=True)),
        "max_epochs": _optional(positive_number),
        "hold_unmeasured": boolean,
        "noise_aware": boolean,
    }
    settings = {key: checks[key](problems, f"{where}.{key}", value)
                for key, value in section.items() if key in checks}
    problems.raise_if_any("pipeline config")
    return {key: value for key, value in settings.items() if value is not None}  # null: unset


def guard_problems(guards, domains: Sequence[str], where: str = "predict") -> List[str]:
    """What makes the guards impossible for these domains, whatever the proxies find."""
    problems = Problems()
    floors = math.fsum(guards.floor_of(d) for d in domains)
    ceilings = math.fsum(guards.ceiling_of(d) for d in domains)
    if floors > 1 + 1e-12:
        problems.add(f"{where}.floor", f"floors sum to {floors:.4g} over {len(domains)} domains; "
                     "weights sum to 1")
    if ceilings < 1 - 1e-12:
        problems.add(f"{where}.ceiling", f"ceilings sum to {ceilings:.4g} over the domains; weights "
                     "sum to 1 (with max_epochs: lower target_tokens or raise max_epochs)")
    for domain in domains:
        if guards.floor_of(domain) > guards.ceiling_of(domain):
            problems.add(where, f"domain {domain!r} has floor {guards.floor_of(domain):.4g} above "
                         f"its ceiling {guards.ceiling_of(domain):.4g}; lower the floor")
    return problems.items


def export_section(section: Any, where: str = "export") -> Dict[str, Any]:
    """A pipeline's `export:` settings, typed: formats (known names) and data_paths."""
    from ..formats.export import FORMATS

    problems = Problems()
    section = mapping(problems, where, section, "{formats: [megatron, hf], data_paths: paths.yaml}")
    unknown_keys(problems, where, section, EXPORT_KEYS)
    formats = section.get("formats", [])
    if formats != [] and text_list(problems, f"{where}.formats", formats) is not None:
        for fmt in formats:
            if fmt not in FORMATS:
                close = difflib.get_close_matches(fmt, list(FORMATS), n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                problems.add(f"{where}.formats", f"unknown format {fmt!r}; {hint}known: "
                             f"{', '.join(FORMATS)}")
    data_paths = section.get("data_paths")
    if data_paths is not None:
        text(problems, f"{where}.data_paths", data_paths)
    problems.raise_if_any("pipeline config")
    return {"formats": list(formats) if isinstance(formats, list) else [], "data_paths": data_paths}


@contextmanager
def quiet(logger_name: str):
    """Silence a logger's warnings during a dry run (the real run repeats them)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def output_dir_problem(path) -> Optional[str]:
    """Why ``path`` cannot become an output directory (a file in the way), or None."""
    for candidate in [Path(path), *Path(path).parents]:
        if candidate.exists():
            if not candidate.is_dir():
                what = "is a file" if candidate == Path(path) else f"is under {candidate}, a file"
                return f"{path} {what}, not a directory; choose another output_dir"
            return None
    return None
