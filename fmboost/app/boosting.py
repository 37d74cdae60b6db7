"""What the app (:mod:`fmboost.app`) does, without its page: load stages, boost uploads, compare results.

Stages load on first use and stay loaded, so a stage that fails to load is one error on the page while
the others keep working. A *stage spec* is a model directory or training run, or several joined by
``+`` for a cascade. Every result is saved as PNG with the JSON sidecar ``fmboost-generate`` writes.
"""

import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image, ImageDraw

from fmboost.atomic_files import write_json_atomically
from fmboost.config import MemoryBound
from fmboost.errors import FMBoostError

CASCADE_SEPARATOR = "+"
Progress = Callable[[int, str], None]


def cascade_stages(spec: str) -> list[str]:
    """The stage directories of a stage spec: one, or several joined by ``+`` for a cascade."""
    return [part.strip() for part in spec.split(CASCADE_SEPARATOR)]


@dataclass(frozen=True)
class Request:
    """One result to compute for every input: which stage spec, at which NFE and solver, with which
    consistency step (None: the stage's trained settings and default step)."""

    label: str
    spec: str
    nfe: int | None = None
    solver: str | None = None
    consistency: str | None = None

    def describe(self) -> str:
        settings = f"{self.nfe} NFE" if self.nfe else "trained NFE"
        stages = CASCADE_SEPARATOR.join(Path(stage).name for stage in cascade_stages(self.spec))
        extras = [value for value in (self.solver, self.consistency) if value]
        return f"{self.label}: {stages} · {settings}" + "".join(f" · {value}" for value in extras)


@dataclass
class Result:
    request: Request
    path: Path
    sidecar: Path
    size: tuple[int, int]
    seconds: float
    timings: dict[str, float]
    nfe: list[int]


@dataclass
class Boosted:
    """One input image: its name, the input enlarged bicubically to the results' size, and its results."""

    name: str
    bicubic: Path
    results: list[Result] = field(default_factory=list)

    def columns(self) -> list[tuple[Path, str]]:
        """The compare view's columns: bicubic first, then each result with its label."""
        return [(self.bicubic, "bicubic")] + [(r.path, r.request.describe()) for r in self.results]


class StageLibrary:
    """Pipelines by stage spec, loaded once; one lock, since the queue runs one boost at a time anyway."""

    def __init__(self, device: str = "auto", dtype: str = "auto", memory: MemoryBound | None = None) -> None:
        self.device, self.dtype, self.memory = device, dtype, memory or MemoryBound()
        self.pipelines: dict[str, object] = {}
        self.lock = threading.Lock()

    def pipeline(self, spec: str):
        from fmboost.inference.pipeline import FMBoostPipeline

        with self.lock:
            if spec not in self.pipelines:
                try:
                    self.pipelines[spec] = FMBoostPipeline.from_pretrained(
                        cascade_stages(spec), device=self.device, dtype=self.dtype, memory=self.memory
                    )
                except FMBoostError as error:
                    raise FMBoostError(f"stage {spec} cannot be loaded: {error}") from None
            return self.pipelines[spec]

    def planned_evaluations(self, request: Request) -> int:
        """How many network evaluations a request takes per image (adaptive solvers: their trained NFE)."""
        pipeline = self.pipeline(request.spec)
        return sum(request.nfe or stage.flow_config.nfe for stage in pipeline.stages)


def boost_uploads(
    library: StageLibrary,
    uploads: Sequence[tuple[str, str]],
    requests: Sequence[Request],
    seed: int,
    out_dir: Path,
    flow_tile_size: int,
    progress: Progress | None = None,
) -> list[Boosted]:
    """Boost every ``(path, name)`` upload with every request; results and sidecars go to ``out_dir``.

    ``flow_tile_size`` is the pipelines' tiling for this call (0: never tile). Everything is checked
    (every image readable, every stage loadable, the tiling, every result within the memory bound)
    before the first evaluation, so a bad input costs no compute. ``progress(done, what)`` counts
    network evaluations.
    """
    from fmboost.image_processing import load_image, to_pil
    from fmboost.inference.sidecar import sidecar

    pipelines = {request.spec: library.pipeline(request.spec) for request in requests}
    for pipeline in pipelines.values():
        pipeline.bound_memory(replace(pipeline.memory, flow_tile_size=flow_tile_size))
    multiple = math.lcm(*(pipeline.image_multiple for pipeline in pipelines.values()))  # fits every one
    images = [(load_image(path, multiple, name), name) for path, name in uploads]
    for image, name in images:
        for pipeline in pipelines.values():
            pipeline.check_image_size(image, name)
    out_dir.mkdir(parents=True, exist_ok=True)
    done, boosted = 0, []
    for image, name in images:
        stem = Path(name).stem
        entry = Boosted(name, out_dir / f"{stem}_bicubic.png")
        for request in requests:
            pipeline = pipelines[request.spec]

            def report(stage: int, evaluations: int, request: Request = request, name: str = name) -> None:
                nonlocal done
                done += 1
                if progress is not None:
                    progress(done, f"{name} · {request.label} · stage {stage}, evaluation {evaluations}")

            started = time.perf_counter()
            output = pipeline(
                images=image,
                seed=seed,
                nfe=request.nfe,
                solver=request.solver,
                consistency=request.consistency,
                progress=report,
            )
            seconds = time.perf_counter() - started
            result = output.images[0]
            path = out_dir / f"{stem}_{request.label}_{uuid.uuid4().hex[:6]}.png"
            result.save(path, format="PNG")
            record = sidecar(
                {"image": name},
                seed,
                1,
                result,
                cascade_stages(request.spec),
                output,
                request.solver,
            )
            write_json_atomically(path.with_suffix(".json"), record | {"flow_tile_size": flow_tile_size})
            entry.results.append(
                Result(
                    request, path, path.with_suffix(".json"), result.size, seconds, output.timings, output.nfe
                )
            )
        largest = max((r.size for r in entry.results), key=lambda size: size[0] * size[1])
        to_pil(image)[0].resize(largest, Image.Resampling.BICUBIC).save(entry.bicubic)
        boosted.append(entry)
    return boosted


def zoom(columns: Sequence[tuple[Path, str]], center: tuple[float, float], size: int) -> Image.Image:
    """The same ``size``² region of every column side by side, enlarged without smoothing to ~256 px.

    ``center`` is the region's centre as fractions of the width and height; the region stays inside.
    Columns are at the first column's resolution (the bicubic input is the largest result's size);
    a smaller result, such as one stage beside a cascade, is enlarged to it without smoothing.
    """
    images = [Image.open(path).convert("RGB") for path, _ in columns]
    width, height = images[0].size
    size = max(8, min(size, width, height))
    left = round(min(max(center[0] * width - size / 2, 0), width - size))
    top = round(min(max(center[1] * height - size / 2, 0), height - size))
    tile, caption = size * max(1, 256 // size), 18
    sheet = Image.new("RGB", (len(images) * (tile + 4) - 4, tile + caption), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (image, (_, label)) in enumerate(zip(images, columns, strict=True)):
        crop = (
            image.resize((width, height), Image.Resampling.NEAREST)
            if image.size != (width, height)
            else image
        )
        region = crop.crop((left, top, left + size, top + size)).resize(
            (tile, tile), Image.Resampling.NEAREST
        )
        sheet.paste(region, (index * (tile + 4), caption))
        draw.text((index * (tile + 4) + 2, 2), label, fill="black")
    return sheet
