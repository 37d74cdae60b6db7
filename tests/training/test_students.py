"""Students are ordinary stages: trained with real DeepSpeed from a teacher (train.init_from), exported,
loaded and run by fmboost-generate at 1 NFE."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from data_pipeline.pairs_config import load_pairs_config
from data_pipeline.teacher_pairs import run as make_pairs
from fmboost.config import FlowConfig
from fmboost.config_loading import load_config
from fmboost.distributed import DistributedEnv
from fmboost.errors import FMBoostError
from fmboost.generate import main as generate
from fmboost.models import FMBoostModel
from fmboost.training.init_from import load_initial_weights
from fmboost.training.trainer import train
from tests.conftest import free_port, photo, tiny_unet_config
from tests.pipeline.tiny_models import save_tiny_stage
from tests.training.helpers import build_latents, training_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("students")
    latents = build_latents(root)
    teacher = save_tiny_stage(root / "teacher", latent_channels=3, first_stage={"name": "identity"})
    pairs = root / "pairs"
    make_pairs(
        load_pairs_config(None, [f"teacher={teacher}", f"input={latents}", f"output={pairs}", "nfe=4"])
    )
    return latents, teacher, pairs


def student_overrides(latents, run_dir, teacher, objective, trained_nfe, *extra) -> list[str]:
    return [
        *training_overrides(latents, run_dir, max_steps=2, validate_every=2, checkpoint_every=2),
        "model.num_heads=null",
        "model.head_channels=8",
        f"flow.objective={objective}",
        f"flow.trained_nfe={trained_nfe}",
        "flow.nfe=1",
        f"train.init_from={teacher}",
        *extra,
    ]


def boost_at_one_nfe(stage, tmp_path) -> dict:
    source = tmp_path / "photo.png"
    Image.fromarray(((photo("chelsea", 32)[0].permute(1, 2, 0) + 1) * 127.5).byte().numpy()).save(source)
    args = ["--stage", str(stage), "--input-image", str(source), "--out", str(tmp_path / "out"), "--nfe", "1"]
    assert generate(args) == 0
    assert Image.open(tmp_path / "out" / "00000.png").size == (64, 64)
    return json.loads((tmp_path / "out" / "00000.json").read_text())


@pytest.mark.parametrize(
    ("objective", "trained_nfe", "data"),
    [("reflow", "[1,2]", "pairs"), ("shortcut", "[1,2,4]", "latents")],
)
def test_a_student_trains_from_its_teacher_exports_loads_and_generates_at_one_nfe(
    tmp_path, setup, objective, trained_nfe, data
):
    latents, teacher, pairs = setup
    extra = [f"data.train={pairs}/shards/{{000000..000003}}.tar"] if data == "pairs" else []
    config = load_config(
        "configs/demo/tiny_cpu.yaml",
        student_overrides(latents, tmp_path / objective, teacher, objective, trained_nfe, *extra),
    )
    result = train(config, DistributedEnv(master_port=free_port()))
    assert result.status == "finished"

    student = FMBoostModel.from_pretrained(tmp_path / objective)
    flow = student.flow_config
    assert flow.teacher == str(teacher.resolve())  # the teacher of the pairs, or the stage it started from
    assert (flow.objective, flow.nfe) == (objective, 1)
    assert flow.trained_nfe == json.loads(trained_nfe)
    assert student.unet_config.step_conditioning == (objective == "shortcut")
    changed = load_file(str(result.export_dir / "model.safetensors"))
    started = load_file(str(teacher / "model.safetensors"))
    assert any(not torch.equal(changed[name], started[name]) for name in started)  # it trained
    sidecar = boost_at_one_nfe(tmp_path / objective, tmp_path)
    assert sidecar["nfe"] == [1]


def test_init_from_copies_a_stages_weights_and_names_both_shapes_when_they_differ(tmp_path):
    source = save_tiny_stage(tmp_path / "source", latent_channels=3)
    model = FMBoostModel(tiny_unet_config(3), FlowConfig())
    assert load_initial_weights(model, str(source)) == source.resolve()
    stored = load_file(str(source / "model.safetensors"))
    assert all(torch.equal(model.net.state_dict()[name], tensor) for name, tensor in stored.items())

    wider = tiny_unet_config(3)
    wider.model_channels = 24
    with pytest.raises(FMBoostError) as error:
        load_initial_weights(FMBoostModel(wider, FlowConfig()), str(source))
    message = str(error.value)
    assert message.startswith("train.init_from: the weights of")
    resolved = source.resolve()
    assert f"time_embed.0.weight is [64, 16] in {resolved}, [96, 24] in this run's model" in message
    with pytest.raises(FMBoostError, match="train.init_from: .* does not exist"):
        load_initial_weights(model, str(tmp_path / "nowhere"))
