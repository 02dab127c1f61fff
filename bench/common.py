"""Shared set-up for benchmarks: a config (the default competition unless --config), a scratch work dir."""

from __future__ import annotations

import argparse
import tempfile

from pipeline.config import load_config
from pipeline.models import set_offline


def parse(description: str, extra=None, scratch_work: bool = True):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML config (default: configs/default.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--model", help="model name from the config (default: the first)")
    if extra:
        extra(parser)
    args = parser.parse_args()
    overrides = ["runtime.progress=false"]
    if scratch_work:  # benchmarks that train get a scratch work dir; those reading cached predictions do not
        scratch = tempfile.mkdtemp(prefix="bench-")
        overrides += [f"runtime.work_dir={scratch}", f"runtime.folds_dir={scratch}/folds"]
    cfg = load_config(args.config, args.set + overrides)
    set_offline(cfg.runtime.offline)
    spec = next((m for m in cfg.models if m.name == args.model), cfg.models[0]) if args.model else cfg.models[0]
    return args, cfg, spec
