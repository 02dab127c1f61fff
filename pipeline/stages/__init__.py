"""The stage registry: one module per stage, each declaring everything about its stage in one place (the contract,
`pipeline.stage.Stage`: NAME, VERSION, PARTIAL, IMPLICIT, units, run, load, estimate; optionally after, check,
narrow, REPORTED). STAGES is in dependency order; the plan keeps it (`plan.stages`) and the core reaches a stage only
through it: the scheduler, the status, the budget's estimates and the report's inputs all read it. Adding a stage is
one module and one line here.

A stage imports the core only; stages meet through the artifacts their loaders read (checked by import-linter:
pyproject.toml).
"""

from . import blend, features, folds, images, predict, probe, report, submit, train

STAGES = {m.NAME: m for m in (probe, images, folds, features, train, predict, blend, submit, report)}
