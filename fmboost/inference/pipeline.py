"""``FMBoostPipeline``: a base LDM (or given latents/images) → CFM stages → the VAE decoder.

    pipe = FMBoostPipeline.from_pretrained(["runs/cfm_1k/export"], base="path/to/stable-diffusion-v1-5")
    out = pipe(prompts=["a lighthouse at dusk"], seed=0)          # 512 px base → 1024 px
    out.images[0].save("lighthouse.png"); print(out.timings)

The base is any diffusers pipeline that returns latents with ``output_type="latent"`` (SD 1.x,
LCM/LCM-LoRA schedulers, ...). Each stage is an ``FMBoostModel`` with its own solver and NFE; between
stages the latent goes through the stage's context upsampling (PSU: decode, upsample in pixels,
encode), tiled exactly as that stage's training contexts were (its recorded first stage), so inference
sees the context training saw. The first stage (VAE) is the base's, or the one the stages were trained
with, or one given explicitly. Memory is bounded by :class:`~fmboost.config.MemoryBound`: the flow
network runs in blended tiles above ``flow_tile_size`` and results above ``max_output_pixels`` are
refused before any work.

The stages run in ``dtype`` (bf16 on GPUs by default); the autoencoder's encode, context and decode
run autocast to it, as encoding the training data did (``precision: auto``).

After decoding, a consistency step (:mod:`fmboost.consistency`) corrects the result against the
low-res input: the given images, or the given or generated latents decoded. ``consistency=None`` takes
the last stage's default (``flow.consistency``: ``projection`` for clean 2× stages). A cascade applies
it once, after its last stage, against the original input: the whole scale factor in one projection.

``timings`` holds seconds per step: ``base`` or ``encode``, then per stage ``context_N`` (its context
upsampling) and ``stage_N`` (the ODE solve), then ``decode`` and ``consistency`` (with a step).

``compile=True`` compiles every stage's flow network and the autoencoder (:mod:`fmboost.inference.compile`;
CUDA graphs on CUDA). The first call with a new input shape or NFE compiles: it runs once untimed and its
time is reported as ``timings["warmup"]``, apart from the timings of the call itself.
"""

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from fmboost.config import FirstStageConfig, MemoryBound
from fmboost.consistency import check_consistency_mode, enforce_consistency
from fmboost.devices import autocast_to, precision_dtype, resolve_device
from fmboost.errors import FMBoostError, WeightsError
from fmboost.first_stage import build_first_stage
from fmboost.first_stage.base import FirstStage
from fmboost.flow.tiled_sampling import validate_tiling
from fmboost.image_processing import to_pil
from fmboost.inference.compile import compile_for_inference
from fmboost.models import FMBoostModel

logger = logging.getLogger("fmboost.pipeline")


@dataclass
class PipelineOutput:
    images: list[Image.Image]
    latents: torch.Tensor
    timings: dict[str, float] = field(default_factory=dict)
    nfe: list[int] = field(default_factory=list)
    consistency: str = "none"


def load_base(base: str, device: torch.device, dtype: torch.dtype):
    """A diffusers pipeline from a local directory or a hub id, with a clear error offline."""
    from diffusers import DiffusionPipeline

    from fmboost.first_stage.diffusers_vae import looks_like_hub_id

    local = Path(base).expanduser()
    if local.exists() and not (local / "model_index.json").is_file():
        raise WeightsError(f"{local} is not a diffusers pipeline directory (no model_index.json)", "base")
    if not local.exists() and not looks_like_hub_id(base):
        raise WeightsError(f"{local} does not exist", "base")
    try:
        pipeline = DiffusionPipeline.from_pretrained(str(local) if local.exists() else base, dtype=dtype)
    except OSError as error:
        raise WeightsError(
            f"cannot load a diffusers pipeline from {base!r} ({str(error).splitlines()[0]}); without "
            "network access, download it first and pass its local directory",
            "base",
        ) from None
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def evaluation_counter(progress: Callable[[int, int], None], stage: int) -> Callable[[], None]:
    """Calls ``progress(stage, n)`` with n = 1, 2, ... at each evaluation of the stage's network."""
    calls = itertools.count(1)
    return lambda: progress(stage, next(calls))


def one_or_per_stage(values: Sequence | None) -> Sequence | Any:
    """A per-stage setting as given on a command line: none (each stage's trained value), one value for
    every stage, or one per stage."""
    if not values:
        return None
    return values[0] if len(values) == 1 else list(values)


def first_stage_from_stage(stage: FMBoostModel) -> FirstStage:
    """Rebuild the first stage a CFM stage recorded at training time."""
    if stage.first_stage is None:
        raise FMBoostError("the stage does not record its first stage; pass one explicitly", "first_stage")
    return build_first_stage(stage.first_stage)


class FMBoostPipeline:
    """Base generator (optional) → CFM stages → decode; see the module docstring."""

    def __init__(
        self,
        first_stage: FirstStage,
        stages: Sequence[FMBoostModel],
        base: Any = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        memory: MemoryBound | None = None,
        compile: bool = False,
    ) -> None:
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.dtype = precision_dtype(dtype, self.device) if isinstance(dtype, str) else dtype
        if not stages:
            raise FMBoostError("at least one CFM stage is needed")
        self.first_stage = first_stage.to(self.device)
        self.stages = [stage.to(self.device, self.dtype).eval() for stage in stages]
        self.base = base
        for index, stage in enumerate(self.stages, 1):
            if stage.latent_channels != first_stage.latent_channels:
                raise WeightsError(
                    f"stage {index} works on {stage.latent_channels}-channel latents, but the first stage "
                    f"{first_stage.name!r} has {first_stage.latent_channels} channels"
                )
        self.bound_memory(memory or MemoryBound())
        self.context_first_stages = [
            self.first_stage
            if stage.first_stage is None
            else self.first_stage.with_recorded_tiling(stage.first_stage, f"stage {index}")
            for index, stage in enumerate(self.stages, 1)
        ]
        self.compiled = compile
        self.warm_calls: set[tuple] = set()
        if compile:
            modules = [stage.net for stage in self.stages] + self.first_stage.autoencoder_modules()
            compile_for_inference(modules, self.device)

    @classmethod
    def from_pretrained(
        cls,
        stage_dirs: Sequence[str | Path],
        base: str | None = None,
        first_stage: FirstStageConfig | None = None,
        device: str = "auto",
        dtype: str = "auto",
        memory: MemoryBound | None = None,
        compile: bool = False,
    ) -> "FMBoostPipeline":
        torch_device = resolve_device(device)
        torch_dtype = precision_dtype(dtype, torch_device)
        stages = [FMBoostModel.from_pretrained(path) for path in stage_dirs]
        base_pipeline = load_base(base, torch_device, torch_dtype) if base else None
        if first_stage is not None:
            vae = build_first_stage(first_stage)
        elif base_pipeline is not None and hasattr(base_pipeline, "vae"):
            from fmboost.first_stage.diffusers_vae import DiffusersVAE

            recorded = stages[0].first_stage or FirstStageConfig()
            vae = DiffusersVAE(base_pipeline.vae, base, recorded.tile_size, recorded.tile_overlap, "vae")
        else:
            vae = first_stage_from_stage(stages[0])
        return cls(vae, stages, base_pipeline, torch_device, torch_dtype, memory, compile)

    def output_size(self, latent_size: tuple[int, int]) -> tuple[int, int]:
        """Pixel size of the result for a low-res latent of ``latent_size`` (height, width)."""
        factor = self.first_stage.downsampling_factor * math.prod(
            s.flow_config.scale_factor for s in self.stages
        )
        return latent_size[0] * factor, latent_size[1] * factor

    def bound_memory(self, memory: MemoryBound) -> None:
        """Bound memory by ``memory`` from now on; its flow tiles must fit every stage's U-Net."""
        if memory.flow_tile_size:
            for stage in self.stages:
                validate_tiling(memory.flow_tile_size, memory.flow_tile_overlap, stage.size_multiple)
        self.memory = memory

    @property
    def image_multiple(self) -> int:
        """Input images are cropped to a multiple of this many pixels: what the first stage and the first
        U-Net both divide."""
        return self.first_stage.downsampling_factor * self.stages[0].size_multiple

    def check_image_size(self, images: torch.Tensor, what: str) -> None:
        """:meth:`check_output_size` for input images [B, 3, H, W] in pixels."""
        factor = self.first_stage.downsampling_factor
        self.check_output_size((images.shape[-2] // factor, images.shape[-1] // factor), what)

    def check_output_size(self, latent_size: tuple[int, int], what: str) -> None:
        """Refuse, before any work, a result larger than ``memory.max_output_pixels``."""
        height, width = self.output_size(latent_size)
        limit = self.memory.max_output_pixels
        if limit and height * width > limit:
            raise FMBoostError(
                f"{what} would give a {width}×{height} result ({height * width / 1e6:.1f} MP), more than "
                f"the memory bound of {limit / 1e6:.1f} MP; give a smaller input or raise max_output_pixels",
                "max_output_pixels",
            )

    def first_stage_precision(self) -> AbstractContextManager:
        """The autoencoder runs autocast to the pipeline's dtype (bf16 on GPUs by default), as encoding
        the training data did; its weights stay as loaded."""
        return autocast_to(self.dtype, self.device)

    @contextmanager
    def stopwatch(self, timings: dict[str, float], name: str) -> Iterator[None]:
        """Wall time of the block in ``timings[name]``, with the GPU synchronised at both ends."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        started = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        timings[name] = time.perf_counter() - started

    @torch.no_grad()
    def __call__(
        self,
        prompts: Sequence[str] | None = None,
        latents: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        seed: int = 0,
        nfe: Sequence[int | None] | int | None = None,
        solver: Sequence[str | None] | str | None = None,
        progress: Callable[[int, int], None] | None = None,
        consistency: str | None = None,
        **base_kwargs: Any,
    ) -> PipelineOutput:
        """Generate from ``prompts`` (needs a base), or boost scaled ``latents`` or ``images`` in [-1, 1].

        ``nfe``/``solver`` apply to every stage, or give one value per stage; ``None`` keeps each
        stage's trained default. ``progress(stage, evaluations)`` is called before each network
        evaluation of a stage (numbered from 1) with the count so far, e.g. for a progress bar.
        ``consistency``: the step after decoding (``none``, ``adain``, ``wavelet``, ``projection``;
        ``None``: the last stage's default). ``base_kwargs`` go to the base pipeline (e.g.
        ``num_inference_steps``).
        """
        if sum(x is not None for x in (prompts, latents, images)) != 1:
            raise FMBoostError("give exactly one of prompts, latents or images")
        nfes = list(nfe) if isinstance(nfe, Sequence) else [nfe] * len(self.stages)
        solvers = (
            list(solver)
            if isinstance(solver, Sequence) and not isinstance(solver, str)
            else [solver] * len(self.stages)
        )
        if len(nfes) != len(self.stages) or len(solvers) != len(self.stages):
            raise FMBoostError(f"give one nfe/solver for all stages or one per stage ({len(self.stages)})")
        mode = self.default_consistency if consistency is None else consistency
        check_consistency_mode(mode)
        inputs = next(x for x in (prompts, latents, images) if x is not None)
        call = (len(inputs), tuple(getattr(inputs, "shape", ())), tuple(nfes), tuple(solvers))
        warmup = None
        if self.compiled and call not in self.warm_calls:  # compiles: time it apart
            started = time.perf_counter()
            self.generate(prompts, latents, images, seed, nfes, solvers, base_kwargs, None, mode)
            warmup = time.perf_counter() - started
            self.warm_calls.add(call)
        output = self.generate(prompts, latents, images, seed, nfes, solvers, base_kwargs, progress, mode)
        if warmup is not None:
            output.timings["warmup"] = warmup
        return output

    def generate(
        self,
        prompts: Sequence[str] | None,
        latents: torch.Tensor | None,
        images: torch.Tensor | None,
        seed: int,
        nfes: list[int | None],
        solvers: list[str | None],
        base_kwargs: dict[str, Any],
        progress: Callable[[int, int], None] | None,
        consistency: str,
    ) -> PipelineOutput:
        """One generation with per-stage ``nfes``/``solvers`` and a ``consistency`` step (checked by
        :meth:`__call__`)."""
        timings: dict[str, float] = {}
        generator = torch.Generator().manual_seed(seed)
        fs = self.first_stage
        if prompts is not None:
            if self.base is None:
                raise FMBoostError(
                    "prompts need a base model; to boost an image give images or latents", "base"
                )
            base_generator = torch.Generator(self.device).manual_seed(seed)
            with self.stopwatch(timings, "base"):
                z = self.base(
                    prompt=list(prompts), output_type="latent", generator=base_generator, **base_kwargs
                ).images
        elif images is not None:
            with self.stopwatch(timings, "encode"), self.first_stage_precision():
                z = fs.encode_scaled(images.to(self.device))
        else:
            z = latents.to(self.device)
        self.check_output_size(tuple(z.shape[-2:]), "this input")
        low = None
        if consistency != "none":
            low = images if images is not None else self.decode_input(z)
        used = []
        for index, (stage, context_fs, stage_nfe, stage_solver) in enumerate(
            zip(self.stages, self.context_first_stages, nfes, solvers, strict=True), 1
        ):
            with self.stopwatch(timings, f"context_{index}"), self.first_stage_precision():
                z_up = stage.prepare_context(z, context_fs)
            with self.stopwatch(timings, f"stage_{index}"):
                solution = stage.sample(
                    z_up,
                    generator,
                    stage_solver,
                    stage_nfe,
                    tile_size=self.memory.flow_tile_size or None,
                    tile_overlap=self.memory.flow_tile_overlap,
                    on_evaluation=None if progress is None else evaluation_counter(progress, index),
                )
            z = solution.x1.float()
            used.append(solution.nfe)
        with self.stopwatch(timings, "decode"), self.first_stage_precision():
            pixels = fs.decode_scaled(z)
        if low is not None:
            logger.info(
                "consistency: %s of the %d×%d result against the %d×%d input",
                consistency,
                pixels.shape[-1],
                pixels.shape[-2],
                low.shape[-1],
                low.shape[-2],
            )
            with self.stopwatch(timings, "consistency"):
                pixels = enforce_consistency(pixels, low, consistency)
        return PipelineOutput(to_pil(pixels), z.cpu(), timings, used, consistency)

    @property
    def default_consistency(self) -> str:
        """The consistency step of the last stage: it makes the result, so it knows its inputs' kind."""
        return self.stages[-1].flow_config.consistency

    def decode_input(self, latents: torch.Tensor) -> torch.Tensor:
        """Low-res latents as images: the input the consistency step holds the result to."""
        with self.first_stage_precision():
            return self.first_stage.decode_scaled(latents).float()
