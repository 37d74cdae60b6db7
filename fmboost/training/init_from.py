"""``train.init_from``: start a fresh run from the weights of an exported stage (fine-tuning, students).

The source is anything :func:`~fmboost.models.fmboost_model.find_export` accepts: a model directory, a
checkpoint or a training run (its latest checkpoint). Its exported weights are the EMA weights, so the
new run's online and EMA weights both start there; the optimizer, the schedule and the step start
fresh. A resumed run takes its own checkpoint instead. Shapes must match, except for parameters a
student adds to its teacher's network (:data:`~fmboost.models.unet.FRESH_STUDENT_PARAMETERS`), which
keep their initialisation.
"""

from pathlib import Path

from safetensors.torch import load_file

from fmboost.errors import FMBoostError
from fmboost.models import FMBoostModel
from fmboost.models.fmboost_model import WEIGHTS_NAME, find_export
from fmboost.models.unet import FRESH_STUDENT_PARAMETERS

KEY = "train.init_from"


def weight_mismatches(stored: dict, expected: dict, source: Path) -> list[str]:
    """What keeps ``stored`` weights from loading into a network with ``expected`` tensors."""
    missing = [k for k in expected if k not in stored and not k.startswith(FRESH_STUDENT_PARAMETERS)]
    unexpected = [k for k in stored if k not in expected]
    problems = [f"missing there: {missing[:3]}"] if missing else []
    problems += [f"not in this model: {unexpected[:3]}"] if unexpected else []
    problems += [
        f"{name} is {list(stored[name].shape)} in {source}, {list(tensor.shape)} in this run's model"
        for name, tensor in expected.items()
        if name in stored and stored[name].shape != tensor.shape
    ][:3]
    return problems


def load_initial_weights(model: FMBoostModel, source: str) -> Path:
    """Copy the weights of the stage ``source`` names into ``model``; returns the model directory used."""
    try:
        directory = find_export(source).resolve()
        stored = load_file(str(directory / WEIGHTS_NAME))
    except FMBoostError as error:
        raise FMBoostError(error.message, KEY) from None
    except Exception as error:  # a missing, truncated or foreign weights file
        raise FMBoostError(f"{source}: cannot read {WEIGHTS_NAME} ({error})", KEY) from None
    expected = model.net.state_dict()
    problems = weight_mismatches(stored, expected, directory)
    if problems:
        raise FMBoostError(
            f"the weights of {directory} do not fit this run's model (see its config.json and this run's "
            "model section): " + "; ".join(problems),
            KEY,
        )
    model.net.load_state_dict(stored, strict=False)
    return directory
