"""The ``autoscale export`` sub-command: a mixture in a training framework's format."""

import sys

from ..atomic import atomic_write_text
from ..console import emit
from ..formats.schemas import load_mixture
from .common import check_output_file, writing


_EXPORT_EXAMPLE = """example:
  autoscale export mixture_10B.json --format megatron --data-paths paths.yaml
  autoscale export mixture_10B.json --format gpt-neox --data-paths paths.yaml --out data.yml
"""


def register(commands, formatter):
    from ..formats.export import FORMATS

    p = commands.add_parser("export", help="write a mixture in a training framework's format",
                            description="Turn a mixture plus a domain -> data-path map into "
                            "the config your trainer reads.\n\n" + _EXPORT_EXAMPLE,
                            formatter_class=formatter)
    p.add_argument("mixture", help="mixture file (autoscale.mixture/v1)")
    p.add_argument("--format", required=True, choices=sorted(FORMATS), help="target format")
    p.add_argument("--data-paths", required=True, help="YAML/JSON map of domain -> data path(s)")
    p.add_argument("--out", default=None, help="file to write (default: stdout)")
    p.add_argument("--seed", type=int, default=0,
                   help="sampling seed written into the hf and litdata exports")
    p.add_argument("--manifest", default=None,
                   help="domains manifest whose document and token counts convert hf "
                   "probabilities to per-example ones and cap olmo-core repetition "
                   "(default: --data-paths when it is a manifest)")
    p.set_defaults(handler=cmd_export)


def cmd_export(args) -> int:
    from ..formats.export import export_mixture, load_data_paths

    if args.out:
        check_output_file(args.out, [args.mixture, args.data_paths, args.manifest])
    mixture = load_mixture(args.mixture)
    paths = load_data_paths(args.data_paths, manifest=args.manifest)
    text = export_mixture(mixture, paths, args.format, seed=args.seed)
    if args.out:
        with writing(args.out):
            atomic_write_text(args.out, text if text.endswith("\n") else text + "\n")
        emit(f"wrote {args.out} ({args.format})")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0
