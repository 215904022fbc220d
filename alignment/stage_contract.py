"""The stage contract: what the pipeline hands a stage, and what a stage hands back.

A stage runner is a plain function ``run(cfg, ctx) -> StageResult`` whose ``cfg``
parameter is annotated with a dataclass (the stage's schema). The pipeline merges the
recipe's stage block into that dataclass (an unknown key fails at start, naming it),
then calls the runner with a :class:`StageContext`.

Rules a stage follows:
- it writes only inside ``ctx.stage_dir`` and writes atomically
  (``alignment.artifacts.atomic_write*`` or ``save_pretrained`` into ``ctx.tmp_dir()``
  followed by ``ctx.publish``);
- training stages keep trainer checkpoints in ``ctx.checkpoint_dir`` and resume from
  ``ctx.last_checkpoint()`` when it is not None;
- it reads earlier stages' outputs only through ``ctx.input(name, key)``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StageResult:
    """What a stage produced.

    Args:
        outputs (`dict[str, str]`): output name -> path (relative to the stage dir, or
            absolute inside it). Conventional names: ``model`` (a save_pretrained dir),
            ``dataset`` / ``sft`` / ``pairs`` (JSONL or HF dataset dirs), ``report``.
        metrics (`dict[str, float | int | str]`): flat metrics for the manifest and the
            final table (e.g. ``train_loss``, ``pairwise_acc``).
    """

    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class InputArtifact:
    """An earlier stage's outputs (or an explicit path given in the recipe)."""

    name: str
    dir: Path
    outputs: dict[str, Path]
    metrics: dict[str, Any]

    def path(self, key: str | None = None) -> Path:
        if key is None or not self.outputs:
            return self.dir
        if key not in self.outputs:
            from alignment.errors import MissingInputError

            raise MissingInputError(
                f"input '{self.name}' ({self.dir}) has no output '{key}'; it has {sorted(self.outputs)}"
            )
        return self.outputs[key]


@dataclass
class StageContext:
    """Everything a stage needs from the pipeline.

    Args:
        name (`str`): the stage's name in the recipe (e.g. ``dpo_r1``).
        run_dir (`Path`): ``runs/<run_name>``.
        stage_dir (`Path`): ``runs/<run_name>/<name>``; the only place the stage writes.
        inputs (`dict[str, InputArtifact]`): resolved ``inputs:`` of the stage block.
        root (`DictConfig`): the whole composed recipe (read-only; prefer the stage's cfg).
        device (`str`): ``cpu`` / ``cuda`` / ``auto`` resolved to a real device.
        seed (`int`): the recipe's seed.
    """

    name: str
    run_dir: Path
    stage_dir: Path
    inputs: dict[str, InputArtifact]
    root: Any = None
    device: str = "cpu"
    seed: int = 0

    @property
    def is_main_process(self) -> bool:
        """False on the non-zero ranks of a distributed launch: only rank 0 writes outputs."""
        return int(os.environ.get("RANK", "0")) == 0

    @property
    def checkpoint_dir(self) -> Path:
        return self.stage_dir / "checkpoints"

    def input(self, name: str, key: str | None = None) -> Path:
        if name not in self.inputs:
            from alignment.errors import MissingInputError

            raise MissingInputError(
                f"stage '{self.name}' needs input '{name}', which stage.{self.name}.inputs does not set "
                f"(it sets {sorted(self.inputs)}); set stage.{self.name}.inputs.{name} to a stage name or a path")
        return self.inputs[name].path(key)

    def last_checkpoint(self) -> str | None:
        """Newest intact ``checkpoint-<step>`` folder in ``checkpoint_dir`` (HF Trainer layout), or None.

        A newer checkpoint whose weights or trainer state are broken is skipped with a warning
        (``alignment.checkpoints.last_good_checkpoint``)."""
        from alignment.checkpoints import last_good_checkpoint

        return last_good_checkpoint(self.checkpoint_dir)

    def tmp_dir(self, key: str) -> Path:
        """A fresh temp folder inside the stage dir for building output ``key``; see :meth:`publish`."""
        tmp = self.stage_dir / f".tmp-{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def publish(self, tmp: Path, key: str) -> str:
        """Atomically move a folder built in :meth:`tmp_dir` to ``stage_dir/<key>``; returns ``key``."""
        from alignment.artifacts import atomic_replace_dir

        atomic_replace_dir(tmp, self.stage_dir / key)
        return key
