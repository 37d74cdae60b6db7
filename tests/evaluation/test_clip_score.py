import json

import pytest
import torch

from evaluation.clip_score import ClipScorer
from fmboost.errors import WeightsError
from tests.pipeline.tiny_models import byte_level_vocabulary


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    directory = tmp_path_factory.mktemp("clip")
    vocabulary = byte_level_vocabulary()
    (directory / "vocab.json").write_text(
        json.dumps({token: index for index, token in enumerate(vocabulary)})
    )
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocabulary),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "bos_token_id": len(vocabulary) - 2,
            "eos_token_id": len(vocabulary) - 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(directory / "model")
    processor.save_pretrained(directory / "model")
    return directory / "model"


def test_clip_score_is_one_hundred_times_the_cosine_clamped_at_zero(tiny_clip):
    from transformers import CLIPModel, CLIPProcessor

    scorer = ClipScorer(str(tiny_clip), torch.device("cpu"))
    images = torch.randint(0, 256, (4, 3, 48, 40), dtype=torch.uint8)
    captions = [
        "a red fox",
        "a blue bird in the sky",
        "a tall tree",
        "word " * 120,
    ]  # the last exceeds 77 tokens
    scores = scorer(images, captions)

    model, processor = CLIPModel.from_pretrained(tiny_clip).eval(), CLIPProcessor.from_pretrained(tiny_clip)
    with torch.no_grad():
        pixel_values = processor(images=[i.permute(1, 2, 0).numpy() for i in images], return_tensors="pt")[
            "pixel_values"
        ]
        image_features = model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output)
        tokens = processor(text=captions, return_tensors="pt", padding=True, truncation=True, max_length=77)
        text_output = model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        text_features = model.text_projection(text_output.pooler_output)
    assert tokens["input_ids"].shape[1] == 77
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    expected = torch.clamp(100 * (image_features * text_features).sum(-1), min=0)
    torch.testing.assert_close(torch.from_numpy(scores), expected, rtol=1e-4, atol=1e-4)
    assert (scores >= 0).all()


def test_a_missing_clip_model_is_one_clear_line(tmp_path):
    with pytest.raises(WeightsError, match="cannot load CLIP"):
        ClipScorer(str(tmp_path / "no-clip"), torch.device("cpu"))
