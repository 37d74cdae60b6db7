"""The real photos that ship inside scikit-image, split once into the ones the sample dataset trains on
and the ones it holds out: the sample data (:mod:`data_pipeline.sample_data`) is cut from them, and the
app and the benchmarks offer the held-out ones as examples no demo stage was trained on."""

from pathlib import Path

TRAINING_PHOTOS = {
    "astronaut.png": "a portrait of an astronaut in a white spacesuit in front of the American flag",
    "hubble_deep_field.jpg": "galaxies in the Hubble deep field",
    "ihc.png": "a microscope image of stained tissue",
    "motorcycle_left.png": "a motorcycle in a workshop",
    "motorcycle_right.png": "a red motorcycle parked indoors",
    "retina.jpg": "a photograph of the retina of a human eye",
    "camera.png": "a black and white photo of a man with a camera on a tripod",
    "logo.png": "the scikit-image logo on a transparent background",
}
HELD_OUT_PHOTOS = {
    "chelsea.png": "a ginger tabby cat looking to the side",
    "coffee.png": "a cup of coffee on a saucer with a spoon",
    "rocket.jpg": "a rocket on the launch pad under a blue sky",
}
PHOTOS = {**TRAINING_PHOTOS, **HELD_OUT_PHOTOS}


def photo_directory() -> Path:
    """Where scikit-image keeps them."""
    import skimage.data

    return Path(skimage.data.__file__).parent
