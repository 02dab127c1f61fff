"""One module per stage, each declaring everything about its stage in one place:

- `NAME`, `VERSION` (bump when a code change alters what the stage writes), `PARTIAL` (the file whose presence means
  a resumable, unfinished unit, or None), `IMPLICIT` (built on demand when a later stage alone needs it);
- `units(plan) -> list[Unit]`: its units from the config and the units of earlier stages (params, inputs, resources);
- `run(plan, unit, out) -> dict(outputs=[...], scores={...})`: the work of one unit, given the plan any process
  rebuilds from the config; it reads inputs only through `plan.load_input` (their own stage's loader);
- `load(plan, unit)`: what consumers get from a done unit;
- optionally `after(plan, units, **options)`: run in the main process once the stage's units are done;
- optionally `check(plan) -> {unit key: problem}`: a done unit whose published copy outside the store no longer is
  what it wrote (an edited folds/<competition>.csv); `status` shows it as broken, a run refuses it;
- optionally `narrow(plan, unit, missing) -> Unit`: the stage takes what is done (the report): when run on its own
  with inputs not done, its unit is replaced by this one, built on the done inputs (scheduler.narrow_to_done).

A stage imports the core only; stages meet through the artifacts their loaders read. STAGES is the registry, in
dependency order: adding a stage is one module and one line here.
"""

from . import blend, features, folds, images, predict, probe, report, submit, train

STAGES = {m.NAME: m for m in (probe, images, folds, features, train, predict, blend, submit, report)}
