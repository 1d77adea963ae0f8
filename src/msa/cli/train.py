"""`msa train`, `msa export` and `msa demo`."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import textwrap
import typing

from msa.cli.common import UsageError, check_device


def _summary(path) -> str:
    """The first line of a recipe file's docstring (read without running the file)."""
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError):
        return "(unreadable)"
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _keys(cls, prefix: str = "") -> list[str]:
    """Override keys of a config dataclass: ``data.micro_batch_size``; list items as ``.N.``."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        args = typing.get_args(t)
        if dataclasses.is_dataclass(t):
            keys += _keys(t, f"{prefix}{f.name}.")
        elif typing.get_origin(t) is list and args and dataclasses.is_dataclass(args[0]):
            keys += _keys(args[0], f"{prefix}{f.name}.N.")
        else:
            keys.append(prefix + f.name)
    return keys


def train_epilog() -> str:
    """Recipes with their summaries and the override keys, for ``msa train --help``."""
    from msa.train.config import TrainConfig
    from msa.train.entry import available_recipes

    lines = ["recipes (recipes/*.py; or a path to a .py file defining recipe() -> TrainConfig):"]
    for name, path in available_recipes().items():
        lines.append(textwrap.shorten(f"  {name:20s} {_summary(path)}", 118, placeholder=" ..."))
    lines += ["", "keys (KEY=VALUE overrides; list items by index, e.g. schedule.phases.0.steps=500):"]
    by_section: dict[str, list[str]] = {}
    for key in _keys(TrainConfig):
        section, _, rest = key.partition(".")
        by_section.setdefault(section if rest else "", []).append(rest or section)
    for section, names in by_section.items():
        head = f"  {section}." if section else "  (top level)"
        lines += textwrap.wrap(", ".join(names), 118, initial_indent=f"{head:15s}", subsequent_indent=" " * 15)
    lines += ["", "Training on the CPU: only small recipes are practical (cpu_routing: minutes on 2 cores); "
              "bios_tiny and msa4b_shape_smoke are GPU recipes (bios_tiny: ~3 min a step on 2 busy CPU cores)."]
    return "\n".join(lines)


class _TrainHelp(argparse.Action):
    """``--help`` that lists the recipes and keys (built only when asked for: it reads the recipe files)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.print_help()
        print()
        print(train_epilog())
        parser.exit()


def cmd_train(args) -> int:
    from msa.train.entry import load_recipe, run

    overrides = list(args.overrides)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise UsageError(f"overrides are KEY=VALUE, got {bad[0]!r} (msa train --help lists the keys)")
    if args.device:
        overrides.append(f"parallel.device={args.device}")
    config = load_recipe(args.recipe, overrides)
    if config.parallel.device != "auto":
        check_device(config.parallel.device)
    run(config)
    return 0


def cmd_export(args) -> int:
    from msa.train.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, tokenizer_dir=args.tokenizer)
    print(f"exported {args.checkpoint} -> {out} (use: msa bank create BANK --model {out})")
    return 0


def cmd_demo(args) -> int:
    from msa.demo import DemoConfig, run

    run(DemoConfig(documents=args.documents, questions=args.questions))
    return 0


def cmd_checkpoint(args) -> int:
    from msa.train.portable import pack_checkpoint, unpack_checkpoint

    if args.action == "pack":
        if not args.part_mb > 0:
            raise UsageError(f"--part-mb must be > 0, got {args.part_mb}")
        m = pack_checkpoint(args.checkpoint, args.out, part_bytes=int(args.part_mb * (1 << 20)))
        size = sum(p["bytes"] for p in m["model"] + m["optim"])
        print(f"packed step {m['step']} into {args.out}: {len(m['model']) + len(m['optim'])} parts, {size / 1e6:.1f} MB")
    else:
        print(f"unpacked into {unpack_checkpoint(args.packed, args.out)}")
    return 0


def add_parsers(sub) -> None:
    t = sub.add_parser("train", help="run a training recipe: msa train RECIPE [key=value ...]", add_help=False,
                       description="Train with a recipe. Progress and loss are logged as it runs; every checkpoint "
                                   "step_N/ is also a model directory (msa bank create --model it).")  # fmt: skip
    t.add_argument("-h", "--help", action=_TrainHelp, help="show this help, the recipes and the keys")
    t.add_argument("recipe", help="a recipe name (see below) or a .py file")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    t.add_argument("--device", default=None, help="shorthand for parallel.device=DEVICE (cpu, cuda)")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("export", help="turn a training checkpoint into a model directory",
                       description="Write config.json, safetensors and the tokenizer of a training checkpoint "
                                   "(step_N/ or the checkpoint directory: its newest step) into OUT_DIR.")  # fmt: skip
    e.add_argument("checkpoint", metavar="CHECKPOINT_DIR")
    e.add_argument("out", metavar="OUT_DIR")
    e.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the step's, else the run's)")
    e.set_defaults(fn=cmd_export)

    ck = sub.add_parser("checkpoint", help="pack a training checkpoint to travel, or unpack one to resume",
                        description="pack: a training checkpoint (step_N/ or a checkpoint directory: its newest "
                                    "step) into a directory of parts of at most --part-mb MiB, weights exact, Adam "
                                    "moments compacted (msa.train.portable). unpack: a packed checkpoint into a "
                                    "checkpoint directory that `msa train ... checkpoint.dir=DIR` resumes from.")  # fmt: skip
    ck_sub = ck.add_subparsers(dest="action", required=True)
    pk = ck_sub.add_parser("pack", help="CHECKPOINT_DIR -> PACKED_DIR")
    pk.add_argument("checkpoint", metavar="CHECKPOINT_DIR")
    pk.add_argument("out", metavar="PACKED_DIR")
    pk.add_argument("--part-mb", type=float, default=15.0, help="largest part in MiB (default 15)")
    un = ck_sub.add_parser("unpack", help="PACKED_DIR -> CHECKPOINT_DIR")
    un.add_argument("packed", metavar="PACKED_DIR")
    un.add_argument("out", metavar="CHECKPOINT_DIR")
    ck.set_defaults(fn=cmd_checkpoint)

    dm = sub.add_parser("demo", help="the end-to-end demo (`make demo`)")
    dm.add_argument("--documents", type=int, default=4096, help="people in the memory (~90 tokens each)")
    dm.add_argument("--questions", type=int, default=4)
    dm.set_defaults(fn=cmd_demo)


__all__ = ["add_parsers", "train_epilog"]
