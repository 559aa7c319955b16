"""Model selection on the validation split, within a stage and across stages, and what a run records.

Every stage selects its best weights on the validation split (never the test volume) and the next
stage starts from them; a later stage replaces them only by beating them on its own validation
samples, so the run ends with the best weights across stages (``config.yaml``, section ``selection``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sam4em.training.config import TrainConfig, config_to_dict

__all__ = ["RunResult", "Selection", "run_record"]


@dataclass
class RunResult:
    """What a training run produced."""

    run_dir: Path
    best_scores: dict[int, float] = field(default_factory=dict)
    steps: dict[int, int] = field(default_factory=dict)
    interrupted: bool = False
    seconds: float = 0.0
    # Which weights the model holds ("stage 1", "stage 2", "init_from") and their validation Dice on
    # the samples of the last stage run.
    kept: str = ""
    kept_score: float = float("nan")


@dataclass
class Selection:
    """The selection state of one stage (saved in its checkpoints).

    `best`: the validation Dice of the weights the stage would end with, which come from `best_from`
    (the stage itself, or the weights it started from); `own_best`: the best its own training reached;
    `patience`: validations since `best` last improved (early stopping).
    """

    stage: int
    best: float = -1.0
    best_from: str = ""
    own_best: float = -1.0
    patience: int = 0

    def __post_init__(self) -> None:
        self.best_from = self.best_from or f"stage {self.stage}"

    @classmethod
    def from_state(cls, stage: int, state: dict[str, Any]) -> Selection:
        """The selection saved in a checkpoint of `stage` (older checkpoints lack the last two fields)."""
        return cls(stage, best=state["best"], patience=state["patience"],
                   best_from=state.get("best_from", ""), own_best=state.get("own_best", state["best"]))

    def state(self) -> dict[str, Any]:
        """The fields a checkpoint saves."""
        return {"best": self.best, "patience": self.patience, "best_from": self.best_from, "own_best": self.own_best}

    def record(self, score: float) -> bool:
        """Take a validation score of this stage's current weights; True when they are the new best."""
        self.own_best = max(self.own_best, score)
        if score > self.best:
            self.best, self.best_from, self.patience = score, f"stage {self.stage}", 0
            return True
        self.patience += 1
        return False

    def unscored(self) -> None:
        """Nothing to select on (no validation samples): the stage's last weights, without a score."""
        self.best, self.own_best, self.best_from = float("nan"), float("nan"), f"stage {self.stage}"


def run_record(result: RunResult, config: TrainConfig, stage: int) -> dict[str, Any]:
    """The sections config.yaml gets beside `model` once `stage` has finished: the config and the selection."""
    stages = config.stages_to_run
    finished = stages[: stages.index(stage) + 1]
    selection = {
        "weights_from": result.kept,
        "val_dice_mean": round(result.kept_score, 4),
        "judged_on": f"the validation samples of stage {stage}",
        "best_val_dice_per_stage": {f"stage {s}": round(result.best_scores.get(s, float("nan")), 4) for s in finished},
        "complete": stage == stages[-1],
    }
    return {"train": config_to_dict(config), "selection": selection}
