"""Command line: ``pyinterp info``, ``pyinterp bench`` and (from the experiments) ``pyinterp reproduce``."""
from __future__ import annotations

import argparse
import json
import shlex
import sys


def _cmd_info(args) -> int:
    from pyinterp._info import info

    data = info(print_out=not args.json)
    if args.json:
        print(json.dumps(data, indent=2))
    return 0


def _cmd_bench(args) -> int:
    from pyinterp.bench import compare

    return compare.main(args.rest)


def _cmd_reproduce(args) -> int:
    from pyinterp import experiments

    try:
        overrides = {k: getattr(args, k) for k in ("model", "judge") if getattr(args, k, None)}
        if overrides and args.paper != "persona":
            raise experiments.ExperimentError(
                f"{', '.join('--' + k for k in overrides)} appl{'y' if len(overrides) > 1 else 'ies'} "
                f"to the persona paper only, not {args.paper!r}")
        if overrides:
            from pyinterp.experiments.persona import check_config

            check_config(experiments.make_config("persona", args.scale, args.device, **overrides))
        entries = experiments.reproduce(args.paper, scale=args.scale, device=args.device,
                                         out=args.out, fresh=args.fresh, command=shlex.join(["pyinterp"] + args.argv),
                                         **overrides)
    except experiments.ExperimentError as e:
        print(f"pyinterp reproduce: error: {e}", file=sys.stderr)
        return 2
    return 0 if all(e["status"] == "done" for e in entries) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyinterp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, devices and backend availability")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("bench", help="side-by-side kernel benchmark table (benchmarks/compare.py)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the comparison")
    p.set_defaults(func=_cmd_bench)
    p = sub.add_parser("reproduce", help="reproduce a paper's results (metrics, figures, HTML page)")
    p.add_argument("paper", help="solu, induction, superposition, double-descent, monosemanticity, "
                   "scaling, persona, or all")
    p.add_argument("--scale", default="quick", help="tiny (seconds), quick (default, minutes on a CPU), "
                   "full (GPU, the papers' sizes)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--out", default="runs", help="output directory; paper P goes to OUT/P/ (default: runs)")
    p.add_argument("--fresh", action="store_true", help="ignore saved checkpoints and recompute every step")
    p.add_argument("--model", default=None, help="persona only: a local Hugging Face chat-model directory "
                   "to run the persona-vector pipeline on (default: train the demo model)")
    p.add_argument("--judge", default=None, help="persona only: trait judge as module:function, "
                   "judge(question, response, trait) -> 0..100 (default: the demo's independent classifier judge)")
    p.set_defaults(func=_cmd_reproduce)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line, shown on the top page of `reproduce all`
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
