"""Command line: `python -m pipeline COMMAND [--config FILE] [--set key=value ...] [--force]` (run.sh calls this)."""

from __future__ import annotations

import argparse
import sys
import time

from .config import ConfigError, load_config

STAGES = ["folds", "features", "train", "predict", "blend", "submit"]


def _stage(name: str):
    import importlib

    return importlib.import_module(f".stages.{name}", __package__)


def status(plan) -> int:
    counts: dict[str, int] = {}
    for unit, partial in plan.units():
        state, reason = plan.store.status(unit, partial)
        counts[state] = counts.get(state, 0) + 1
        print(f"{state:8} {unit.label:48} {reason}")
    print("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./run.sh", description="Kaggle-style image competition pipeline")
    parser.add_argument("command", choices=["all", *STAGES, "status", "submissions"])
    parser.add_argument("--config", help="YAML config (default: configs/default.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--force", action="store_true", help="redo the named stage's units")
    parser.add_argument("--kaggle", metavar="COMPETITION", help="submit: also upload with the Kaggle CLI")
    args = parser.parse_args(argv)

    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.command == "submissions":
        from .config import resolve_path

        _stage("submit").list_submissions(resolve_path(cfg.runtime.submissions_dir))
        return 0
    from .models import set_offline

    set_offline(cfg.runtime.offline)  # before timm is imported
    from .executor import MissingInput
    from .plan import build_plan

    t0 = time.time()
    try:
        plan = build_plan(cfg)
        if args.command == "status":
            return status(plan)
        stages = STAGES if args.command == "all" else [args.command]
        for name in stages:
            kwargs = {"kaggle": args.kaggle} if name == "submit" else {}
            _stage(name).run(plan, force=args.force and args.command != "all", **kwargs)
    except (MissingInput, ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"[{args.command}] finished in {time.time() - t0:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
