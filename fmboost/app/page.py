"""``fmboost-app``: boost your own images in the browser and compare the results side by side.

    make app                                             # after make demo: the demo's stage
    fmboost-app --stage runs/cfm_1k --stage runs/reflow_1k --stage runs/cfm_1k+runs/cfm_2k

Upload one or more images (or pick an example), choose up to three results (a stage, cascade or
student, each at its own NFE, solver and consistency step) and boost. The compare view puts the input
enlarged bicubically beside the results, with a before/after slider and a zoom that shows the same
region of every column at full resolution. Each result downloads as PNG with the JSON sidecar
``fmboost-generate`` writes.

The server binds to 127.0.0.1 and shares nothing unless asked (``--host``, ``--share``). One boost runs
at a time and at most ``--queue-size`` wait, so users cannot exhaust memory; uploads above
``--max-upload-mb`` and results above ``--max-output-pixels`` are refused with a one-line message.
"""

import argparse
import logging
import tempfile
import time
import uuid
from pathlib import Path

from fmboost.cli import (
    add_device_arguments,
    add_output_limit_argument,
    report_errors,
)
from fmboost.config import CONSISTENCY_MODES, MemoryBound
from fmboost.errors import FMBoostError

logger = logging.getLogger("fmboost.app")

DEMO_STAGES = ("runs/demo_taef2", "runs/demo")  # what make demo trains, with TAEF2 or in pixel space
NO_RESULT = "—"
SOLVERS = ("trained", "euler", "midpoint", "rk4", "dopri5")
STAGE_DEFAULT = "stage default"
CONSISTENCY_CHOICES = (STAGE_DEFAULT, *CONSISTENCY_MODES)
SLOT_WIDGETS = 4  # per result: stage, NFE, solver, consistency step
RESULT_SLOTS = ("A", "B", "C")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fmboost-app", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--stage",
        action="append",
        help="a stage to offer: model directory or training run; join several with + for a cascade "
        "(repeatable; default: the demo's stage, runs/demo_taef2 or runs/demo)",
    )
    parser.add_argument(
        "--examples",
        type=Path,
        help="a folder of example images to offer (default: scikit-image photos the demo never trained on)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default: %(default)s)")
    parser.add_argument(
        "--share", action="store_true", help="also open a public gradio.live link (off by default)"
    )
    add_device_arguments(parser)
    add_output_limit_argument(parser)
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=25.0,
        help="refuse uploads larger than this (default: %(default)s)",
    )
    parser.add_argument(
        "--max-images", type=int, default=8, help="images one boost may take (default: %(default)s)"
    )
    parser.add_argument(
        "--queue-size",
        type=int,
        default=4,
        help="boosts that may wait while one runs; more are turned away (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="where results and sidecars are written (default: a temporary folder, removed on exit)",
    )
    return parser.parse_args(argv)


def default_stages(stages: list[str] | None) -> list[str]:
    if stages:
        return stages
    for candidate in DEMO_STAGES:
        if Path(candidate).is_dir():
            return [candidate]
    raise FMBoostError(
        "no stage given and no demo stage found: run make demo first, or pass --stage DIR", "stage"
    )


def example_images(folder: Path | None) -> list[str]:
    """Example inputs: the given folder's images, else the held-out photos of the sample data."""
    from fmboost.image_decoding import IMAGE_SUFFIXES
    from fmboost.sample_photos import HELD_OUT_PHOTOS, photo_directory

    if folder is None:
        return [str(photo_directory() / name) for name in sorted(HELD_OUT_PHOTOS)]
    if not folder.is_dir():
        raise FMBoostError(f"{folder} is not a folder", "examples")
    return [str(path) for path in sorted(folder.iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]


class Handlers:
    """What the page's controls do: boost the uploaded images with the chosen results, and show one
    image's results (gallery, slider, zoom, timings, downloads). A mistake is a one-line ``gr.Error``."""

    def __init__(self, library, out_dir: Path, max_images: int, max_upload_bytes: int) -> None:
        self.library, self.out_dir = library, out_dir
        self.max_images, self.max_upload_bytes = max_images, max_upload_bytes

    def uploads(self, files: list[str] | None) -> list[tuple[str, str]]:
        """(path, name) of each upload, once their number and sizes are within the bounds."""
        import gradio as gr

        if not files:
            raise gr.Error("Upload an image or pick an example first.")
        if len(files) > self.max_images:
            raise gr.Error(
                f"{len(files)} images at once; this app boosts at most {self.max_images} (--max-images)."
            )
        for path in files:
            if Path(path).stat().st_size > self.max_upload_bytes:
                limit = self.max_upload_bytes / 2**20
                raise gr.Error(f"{Path(path).name} is larger than {limit:.0f} MB (--max-upload-mb).")
        return [(path, Path(path).name) for path in files]

    @staticmethod
    def requests_from(slots: list):
        """The results asked for: each slot's (stage, NFE, solver, consistency step), unless its stage is
        left empty."""
        from fmboost.app.boosting import Request

        requests = []
        for label, (spec, nfe, solver, consistency) in zip(
            RESULT_SLOTS, zip(*[iter(slots)] * SLOT_WIDGETS, strict=True), strict=True
        ):
            if spec and spec != NO_RESULT:
                requests.append(
                    Request(
                        label,
                        spec,
                        int(nfe) or None,
                        None if solver == "trained" else solver,
                        None if consistency == STAGE_DEFAULT else consistency,
                    )
                )
        return requests

    def boost(self, files, seed, tile, slots: list, progress) -> tuple:
        import gradio as gr
        import torch

        from fmboost.app.boosting import boost_uploads

        uploads, requests = self.uploads(files), self.requests_from(slots)
        if not requests:
            raise gr.Error("Choose a stage for at least one result.")
        started = time.perf_counter()
        try:
            total = len(uploads) * sum(self.library.planned_evaluations(r) for r in requests)
            boosted = boost_uploads(
                self.library,
                uploads,
                requests,
                int(seed),
                self.out_dir / uuid.uuid4().hex,
                int(tile),
                lambda done, what: progress((min(done, total), total), desc=what, unit="evaluations"),
            )
        except FMBoostError as error:
            raise gr.Error(error.message) from None
        except torch.OutOfMemoryError:
            raise gr.Error("Out of memory: boost fewer or smaller images at once.") from None
        seconds = time.perf_counter() - started
        logger.info("boosted %d image(s) × %d result(s) in %.1f s", len(uploads), len(requests), seconds)
        names = [entry.name for entry in boosted]
        return (
            boosted,
            gr.update(choices=names, value=names[0]),
            *self.view(boosted, names[0], 0.5, 0.5, 64),
        )

    @staticmethod
    def view(boosted, name, x, y, size) -> tuple:
        from fmboost.app.boosting import zoom

        if not boosted:
            return None, None, None, "", None
        entry = next(e for e in boosted if e.name == name)
        columns = entry.columns()
        gallery = [(str(path), label) for path, label in columns]
        slider = (str(entry.bicubic), str(entry.results[0].path))
        timings = "| result | size | seconds | per step (s) |\n|---|---|---|---|\n" + "\n".join(
            f"| {r.request.describe()} | {'×'.join(map(str, r.size))} | {r.seconds:.2f} | "
            + ", ".join(f"{step} {seconds:.3f}" for step, seconds in r.timings.items())
            + " |"
            for r in entry.results
        )
        downloads = [str(p) for e in boosted for r in e.results for p in (r.path, r.sidecar)]
        return gallery, slider, zoom(columns, (x, y), int(size)), timings, downloads


def input_column(gr, examples: list[str]):
    """The uploads, with the examples under them."""
    with gr.Column(scale=1):
        files = gr.File(label="Images", file_count="multiple", file_types=["image"], elem_id="uploads")
        if examples:
            gr.Examples([[[path]] for path in examples], inputs=[files], label="Examples")
    return files


def settings_column(gr, stages: list[str]):
    """Up to three results (a stage, its NFE, solver and consistency step each), the seed, the flow tile
    size, the button."""
    with gr.Column(scale=1):
        slots = []
        for index, label in enumerate(RESULT_SLOTS):
            with gr.Row():
                choices = stages if index == 0 else [NO_RESULT, *stages]
                slots.append(
                    gr.Dropdown(
                        choices, value=choices[0], label=f"Result {label}: stage", elem_id=f"stage_{label}"
                    )
                )
                slots.append(
                    gr.Number(0, label="NFE (0: trained)", precision=0, minimum=0, elem_id=f"nfe_{label}")
                )
                slots.append(
                    gr.Dropdown(list(SOLVERS), value="trained", label="Solver", elem_id=f"solver_{label}")
                )
                slots.append(
                    gr.Dropdown(
                        list(CONSISTENCY_CHOICES),
                        value=STAGE_DEFAULT,
                        label="Hold to the input",
                        info="projection: its downsampling gives the input back; adain, wavelet: colours",
                        elem_id=f"consistency_{label}",
                    )
                )
        with gr.Row():
            seed = gr.Number(0, label="Seed", precision=0)
            tile = gr.Number(
                MemoryBound().flow_tile_size,
                label="Flow tile size (latent positions; 0: never tile)",
                precision=0,
                minimum=0,
                elem_id="flow_tile_size",
            )
        button = gr.Button("Boost", variant="primary", elem_id="boost")
    return slots, seed, tile, button


def compare_view(gr):
    """The image shown, the gallery, the zoom and its controls, the slider, timings and downloads."""
    shown = gr.Dropdown([], label="Image shown", elem_id="shown")
    gallery = gr.Gallery(label="Compare", columns=4, format="png", elem_id="compare", height="auto")
    gr.Markdown("**Zoom**: the same region of each, at full resolution, enlarged without smoothing")
    zoom_image = gr.Image(show_label=False, format="png", elem_id="zoom")  # a label would hide a caption
    with gr.Row():
        zoom_controls = [
            gr.Slider(0, 1, 0.5, step=0.01, label="Zoom centre x"),
            gr.Slider(0, 1, 0.5, step=0.01, label="Zoom centre y"),
            gr.Slider(16, 256, 64, step=8, label="Zoom region (px)"),
        ]
    with gr.Row():
        slider = gr.ImageSlider(label="Before / after (bicubic | result A)", format="png", elem_id="slider")
        timings = gr.Markdown(elem_id="timings")
    downloads = gr.File(label="Downloads (PNG + JSON sidecar)", file_count="multiple", elem_id="downloads")
    return shown, zoom_controls, [gallery, slider, zoom_image, timings, downloads]


def build_app(stages: list[str], examples: list[str], handlers: Handlers):
    """The page: inputs and settings on the left, the compare view, zoom, timings and downloads below."""
    import gradio as gr

    def run_boost(files, seed, tile, *slots, progress=gr.Progress()):  # noqa: B008 (how Gradio finds its bar)
        return handlers.boost(files, seed, tile, list(slots), progress)

    with gr.Blocks(title="FMBoost", analytics_enabled=False) as app:
        gr.Markdown(
            "# FMBoost\nBoost images with trained CFM stages and compare them with bicubic enlargement."
        )
        boosted_state = gr.State([])
        with gr.Row():
            files = input_column(gr, examples)
            slots, seed, tile, boost_button = settings_column(gr, stages)
        shown, zoom_controls, outputs = compare_view(gr)
        boost_button.click(run_boost, [files, seed, tile, *slots], [boosted_state, shown, *outputs])
        for control in (shown, *zoom_controls):
            control.change(
                handlers.view, [boosted_state, shown, *zoom_controls], outputs, show_progress="hidden"
            )
    return app


@report_errors({"stage": "--stage", "examples": "--examples"})
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    import gradio as gr

    from fmboost.app.boosting import StageLibrary, cascade_stages

    stages = default_stages(args.stage)
    for spec in stages:
        for part in cascade_stages(spec):
            if not Path(part).exists():
                logger.warning("stage %s does not exist: boosting with %s will show that error", part, spec)
    memory = MemoryBound(max_output_pixels=args.max_output_pixels)
    library = StageLibrary(args.device, args.dtype, memory)
    with tempfile.TemporaryDirectory(prefix="fmboost-app-") as scratch:
        out_dir = args.out or Path(scratch)
        handlers = Handlers(library, out_dir, args.max_images, int(args.max_upload_mb * 2**20))
        app = build_app(stages, example_images(args.examples), handlers)
        app.queue(max_size=args.queue_size, default_concurrency_limit=1)
        logger.info("stages: %s; results go to %s", ", ".join(stages), out_dir)
        app.launch(
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            max_file_size=int(args.max_upload_mb * 2**20),
            allowed_paths=[str(out_dir)],
            ssr_mode=False,
            theme=gr.themes.Default(
                font=["system-ui", "sans-serif"], font_mono=["monospace"]
            ),  # no web fonts
        )
    return 0
