"""The JSON sidecar beside every boosted image: how it was made, so that it can be made again.

``fmboost-generate``, folder boosting and the app write the same record; folder boosting adds the
settings a rerun into the same folder must match.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

    from fmboost.inference.pipeline import PipelineOutput


def sidecar(
    source: dict[str, str],
    seed: int,
    batch_size: int,
    image: "Image.Image",
    stages: list,
    output: "PipelineOutput",
    solver: Any,
) -> dict[str, Any]:
    """What a result's JSON sidecar records: its source (prompt or image), seed, size, stages, settings
    and per-step timings."""
    return {
        **source,
        "seed": seed,
        "batch_size": batch_size,
        "size": list(image.size),
        "stages": [str(stage) for stage in stages],
        "nfe": output.nfe,
        "solver": solver,
        "consistency": output.consistency,
        "timings_s": output.timings,
    }
