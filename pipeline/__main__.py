"""Command line: `python -m pipeline COMMAND [--config FILE] [--set key=value ...] [--force]` (run.sh calls this)."""

from __future__ import annotations

import argparse
import sys
import time

from . import STARTED, app
from .budget import run_budget
from .config import ConfigError, load_config, resolve_path
from .executor import UnitFailed
from .export import export
from .models import set_offline
from .plan import MissingInput
from .scheduler import run_stages, status
from .stages import STAGES
from .store import start_run

BUDGETED = ("all", "status")  # the commands --budget is for


def run_unit(argv: list[str]) -> int:
    """`python -m pipeline run-unit --plan PLAN --key KEY`: one unit of a published plan (pipeline.app)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline run-unit", description=app.__doc__.split("\n\n")[1])
    parser.add_argument("--plan", required=True, help="the plan the scheduler published (work/.../plans/*.json)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--key", help="the unit's key")
    what.add_argument("--serve", action="store_true", help="answer one request per line on stdin (a worker)")
    parser.add_argument("--force", action="store_true", help="redo the unit")
    parser.add_argument("--deadline", type=float, help="epoch seconds by which a training stops at an epoch's end")
    args = parser.parse_args(argv)
    return app.main(args.plan, args.key, args.force, args.deadline, args.serve)


def parse_args(argv: list[str], stages: list[str]) -> argparse.Namespace:
    """The command line, checked: an option given to a command it means nothing to is an error, not ignored."""
    parser = argparse.ArgumentParser(prog="./run.sh", description="Kaggle-style image competition pipeline")
    parser.add_argument("command", choices=["all", *stages, "status", "submissions", "export", "run-unit"])
    parser.add_argument("--config", help="YAML config (default: configs/default.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--force", action="store_true", help="redo the named stage's units")
    parser.add_argument("--kaggle", metavar="COMPETITION", help="submit: also upload with the Kaggle CLI")
    parser.add_argument("--budget", metavar="TIME", help="all: the best recipe that fits this wall time (10m, 90s); "
                        "status: the units such a run plans")  # fmt: skip
    parser.add_argument("--submission", metavar="NAME", help="export: the submission file (default: the config's)")
    parser.add_argument("--out", metavar="DIR", help="export: the bundle's folder")
    parser.add_argument("--half", action="store_true", help="export: network weights in fp16 (OOF change printed)")
    parser.add_argument("--preset", choices=["fast", "medium", "best", "auto"], help="a recipe from the ladder")
    args = parser.parse_args(argv)
    if args.budget and args.command not in BUDGETED:  # one stage alone never stops at a deadline: refused, not ignored
        parser.error(f"--budget is for `all` (and `status`, to list what such a run plans), not `{args.command}`: "
                     f"run `./run.sh all --budget {args.budget}`")  # fmt: skip
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run-unit"]:
        return run_unit(argv[1:])
    start_run()  # before any executor starts: its workers record this run's id in the units they finish
    stages = [name for name, m in STAGES.items() if not m.IMPLICIT]
    args = parse_args(argv, stages)
    extra = [f"runtime.budget={args.budget}"] if args.budget else []
    extra += [f"preset={args.preset}"] if args.preset else []
    try:
        cfg = load_config(args.config, args.set + extra)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.command == "submissions":
        STAGES["submit"].list_submissions(resolve_path(cfg.runtime.submissions_dir))
        return 0
    set_offline(cfg.runtime.offline)  # before timm loads weights
    t0 = time.time()
    try:
        plan = app.build_plan(cfg)
        for note in plan.comp.notes:
            print(f"[data] note: {note}", flush=True)
        if args.command == "status":
            return status(plan)
        if plan.problems and not (args.force and args.command == "folds"):
            raise ValueError("\n".join(plan.problems.values()))
        if args.command == "export":
            export(plan, args.submission, args.out, args.half)
            return 0
        if cfg.runtime.budget and args.command == "all":
            run_budget(plan, STARTED, kaggle=args.kaggle)
        else:
            run_stages(plan, stages if args.command == "all" else [args.command],
                       force=args.force and args.command != "all", kaggle=args.kaggle)  # fmt: skip
    except (MissingInput, UnitFailed, ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume (finished units are kept, a training resumes "
              "at its last finished epoch)", file=sys.stderr)  # fmt: skip
        return 130
    print(f"[{args.command}] finished in {time.time() - t0:.1f}s ({time.time() - STARTED:.1f}s since start)",
          flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
