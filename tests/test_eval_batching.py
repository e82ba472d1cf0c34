"""Evaluation: batches never pad (batched equals batch 1), and new image sizes do not retrace."""

import numpy as np

import keras
import keras_seg
from data_prep.folder import convert_folder
from keras_seg.data import DataConfig, make_dataset
from keras_seg.training import evaluate
from tests.data.fixtures import write_pair


def test_batched_evaluation_equals_batch_one_on_mixed_sizes_with_image_pooling(tmp_path):
    # PSPNet's pyramid pooling averages over the whole input: padding a smaller image to its
    # batch's largest one would change all its predictions.
    sizes = [(40, 48), (32, 40), (40, 48), (48, 32), (32, 40), (40, 48), (24, 56)]
    for i, (h, w) in enumerate(sizes):
        write_pair(tmp_path / "src", "val", f"v{i}", h=h, w=w, seed=i)
        write_pair(tmp_path / "src", "train", f"t{i}", h=h, w=w, seed=100 + i)
    convert_folder(str(tmp_path / "src/images"), str(tmp_path / "src/masks"), str(tmp_path / "tfr"),
                   ["a", "b", "c"], workers=1, log=lambda m: None)
    keras.utils.set_random_seed(0)
    model = keras_seg.build_model("pspnet", 3, **keras_seg.tiny_options("pspnet"))
    results = {}
    for batch in (1, 3):
        ds = make_dataset(DataConfig(str(tmp_path / "tfr"), "val", batch, False))
        shapes = [tuple(images.shape[1:3]) for images, _, _ in ds]
        if batch > 1:
            assert len(shapes) < len(sizes)  # real batches were formed
        results[batch] = evaluate(model, ds, 3, 255)
        assert results[batch]["num_images"] == len(sizes)
    np.testing.assert_array_equal(results[3]["confusion_matrix"], results[1]["confusion_matrix"])
    # Five distinct sizes at batch 1: the relaxed signature traces at most twice, not five times.
    assert results[1]["traces"] <= 2, results[1]["traces"]
