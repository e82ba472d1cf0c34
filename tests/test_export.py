"""Export: SavedModel signatures, TFLite fp32/fp16/dynamic/int8 under LiteRT, parity report, predict --tflite.

One tiny U-Net is trained for two steps and exported in every format once per module.
"""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_prep.folder import convert_folder
from keras_seg.checkpoints import CheckpointError, load_trained_model
from keras_seg.data.preprocess import MEAN_RGB, normalize_image
from keras_seg.export import ExportConfig, existing_versions, export
from keras_seg.options import TrainConfig
from keras_seg.litert import MEAN_COLOR, TFLiteSegmenter, embedded_metadata
from keras_seg.parity import warnings_for
from keras_seg.predict import overlay
from keras_seg.training import train
from tests.data.fixtures import make_folder_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (16, 16)


def _run(args):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    make_folder_dataset(root / "src", n_train=6, n_val=3)  # 20x24 images: not the 16x16 TFLite size
    data_dir = str(root / "tfr")
    convert_folder(str(root / "src/images"), str(root / "src/masks"), data_dir, ["a", "b", "c"],
                   workers=1, log=lambda m: None)
    model_dir = str(root / "tiny_unet")
    cfg = TrainConfig(model="unet", num_classes=3, data_dir=data_dir, model_dir=model_dir,
                      model_options={"base_width": 4, "depth": 2, "batch_norm": True, "dropout": 0.0},
                      crop_size=SIZE, batch_size=2, train_steps=2, learning_rate=0.01, log_every=2,
                      checkpoint_every=2, eval_split="", strategy="one_device", seed=1, optimizer="adamw")
    cfg.validate()
    train(cfg, log=lambda m: None)
    logs = []
    result = export(ExportConfig(model_dir=model_dir, out=str(root / "out"), parity_images=3, int8_samples=8),
                    log=logs.append)
    model, config, _ = load_trained_model(model_dir)
    return {"root": root, "model_dir": model_dir, "data_dir": data_dir, "out": str(root / "out"),
            "result": result, "logs": logs, "model": model, "config": config}


def _keras_probs(model, images):
    return tf.nn.softmax(model(normalize_image(tf.constant(images)), training=False)).numpy()


def _assert_same_argmax(ids, ref_probs):
    """Class ids equal the reference argmax wherever the reference's top two differ by > 1e-4.

    The tiny model is barely trained, so near-ties exist where a 1e-7 difference may flip
    the argmax on another machine; they are left out, and must stay rare.
    """
    top2 = np.sort(ref_probs, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-4
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(np.asarray(ids)[clear], ref_probs.argmax(-1)[clear])


def _encode(image, fmt):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def test_layout_and_metadata(exported):
    res, out = exported["result"], exported["out"]
    assert res.version == 1
    assert res.paths["saved_model"] == os.path.join(out, "tiny_unet", "1")
    for kind in ("fp32", "fp16", "dynamic", "int8"):
        path = res.paths[f"tflite_{kind}"]
        assert path == os.path.join(out, "tiny_unet_v1", f"tiny_unet_{kind}.tflite") and os.path.getsize(path) > 0
        side = json.load(open(path[: -len(".tflite")] + ".json"))
        with open(path, "rb") as f:
            assert embedded_metadata(f.read()) == side  # the flatbuffer carries the same record
        assert side["preprocessing"]["mode"] == "imagenet" and side["preprocessing"]["mean_rgb"] == list(MEAN_RGB)
        assert side["input_size"] == list(SIZE) and side["class_names"] == ["a", "b", "c"]
        assert side["palette"] == exported["config"]["palette"] and side["format"] == f"tflite_{kind}"
    meta = json.load(open(os.path.join(res.paths["saved_model"], "assets.extra", "keras_seg_metadata.json")))
    assert meta["class_names"] == ["a", "b", "c"] and meta["preprocessing"]["mean_rgb"] == list(MEAN_RGB)
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no staging leftovers


def test_tflite_formats_agree_with_keras_at_their_input_size(exported):
    # Without tiling: every format against Keras on the same 16x16 crops of the val images,
    # pixels whose Keras top two classes are a near-tie (< 1e-4) left out.
    from keras_seg.parity import read_examples

    crops = [image[y : y + 16, x : x + 16] for image, _ in read_examples(exported["data_dir"], "val")
             for y, x in ((0, 0), (4, 8))]
    ref = _keras_probs(exported["model"], np.stack(crops))
    top2 = np.sort(ref, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-4
    floors = {"fp32": 99.9, "fp16": 99.9, "dynamic": 99.0, "int8": 98.0}
    for kind, floor in floors.items():
        seg = TFLiteSegmenter(exported["result"].paths[f"tflite_{kind}"])
        ids = np.stack([seg.predict(c) for c in crops])
        agreement = 100 * np.mean(ids[clear] == ref.argmax(-1)[clear])
        assert agreement >= floor, (kind, agreement)


def test_saved_model_default_signature_equals_keras_at_two_sizes(exported):
    fn = tf.saved_model.load(exported["result"].paths["saved_model"]).signatures["serving_default"]
    rng = np.random.default_rng(3)
    for shape in [(2, 20, 24, 3), (1, 33, 47, 3)]:
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        out = fn(images=tf.constant(images))
        ref = _keras_probs(exported["model"], images)
        assert out["probabilities"].dtype == tf.float32 and out["class_ids"].dtype == tf.uint8
        np.testing.assert_allclose(out["probabilities"].numpy(), ref, atol=1e-5)
        _assert_same_argmax(out["class_ids"].numpy(), ref)


def test_saved_model_bytes_signature_mixed_sizes_and_metadata(exported):
    loaded = tf.saved_model.load(exported["result"].paths["saved_model"])
    fn = loaded.signatures["serving_bytes"]
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (21, 30, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (27, 17, 3), dtype=np.uint8)
    encoded = [_encode(a, "PNG"), _encode(b, "JPEG")]
    out = fn(image_bytes=tf.constant(encoded))
    np.testing.assert_array_equal(out["image_size"].numpy(), [[21, 30], [27, 17]])
    assert out["class_ids"].shape == (2, 27, 30) and out["probabilities"].shape == (2, 27, 30, 3)
    for i, data in enumerate(encoded):
        image = tf.io.decode_image(data, channels=3).numpy()  # the JPEG as the server decodes it
        h, w = image.shape[:2]
        ref = _keras_probs(exported["model"], image[None])[0]
        np.testing.assert_allclose(out["probabilities"][i, :h, :w].numpy(), ref, atol=1e-5)
        _assert_same_argmax(out["class_ids"][i, :h, :w].numpy(), ref)
    # Padding: ignore label in class_ids, zero probabilities.
    assert (out["class_ids"][0, 21:].numpy() == 255).all() and not out["probabilities"][1, :, 17:].numpy().any()
    single = fn(image_bytes=tf.constant(encoded[:1]))
    assert single["class_ids"].shape == (1, 21, 30)

    meta = loaded.signatures["metadata"](request=tf.constant(0))
    assert [s.decode() for s in meta["class_names"].numpy()] == ["a", "b", "c"]
    np.testing.assert_array_equal(meta["palette"].numpy(), exported["config"]["palette"])
    assert int(meta["num_classes"]) == 3 and int(meta["ignore_label"]) == 255


def test_saved_model_refuses_bad_inputs_clearly(exported):
    loaded = tf.saved_model.load(exported["result"].paths["saved_model"])
    fn = loaded.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a uint8 tensor but is a float"):
        fn(images=tf.zeros((1, 8, 8, 3), tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images must be uint8 RGB shaped \(batch, height, width, 3\); received shape\] \[1 8 8 4\]"):
        fn(images=tf.zeros((1, 8, 8, 4), tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[8,8,3\] is not compatible with expected shape \[\?,\?,\?,3\]"):
        fn(images=tf.zeros((8, 8, 3), tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        loaded.signatures["serving_bytes"](image_bytes=tf.constant([b"not an image"]))


def test_saved_model_cli_shows_the_signatures(exported):
    r = _run(["-m", "tensorflow.python.tools.saved_model_cli", "show", "--all",
              "--dir", exported["result"].paths["saved_model"]])
    assert r.returncode == 0, r.stderr[-2000:]
    text = r.stdout
    for sig in ("serving_default", "serving_bytes", "metadata"):
        assert f"signature_def['{sig}']" in text
    default = text.split("signature_def['serving_default']")[1].split("signature_def[")[0]
    assert "inputs['images']" in default and "dtype: DT_UINT8" in default and "shape: (-1, -1, -1, 3)" in default
    assert "outputs['probabilities']" in default and "outputs['class_ids']" in default
    assert "inputs['image_bytes']" in text and "dtype: DT_STRING" in text


def test_tflite_fp32_equals_keras_and_all_kinds_run(exported):
    image = np.random.default_rng(5).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    ref = _keras_probs(exported["model"], image[None])[0]
    paths = exported["result"].paths
    fp32 = TFLiteSegmenter(paths["tflite_fp32"])
    assert fp32.input_size == SIZE
    assert fp32.num_threads == len(os.sched_getaffinity(0))  # all usable CPUs, not LiteRT's 1
    with pytest.raises(ValueError, match="num_threads must be a positive integer"):
        TFLiteSegmenter(paths["tflite_fp32"], num_threads=0)
    np.testing.assert_allclose(TFLiteSegmenter(paths["tflite_fp32"], num_threads=1).run_tile(image), ref, atol=1e-4)
    np.testing.assert_allclose(fp32.run_tile(image), ref, atol=1e-4)
    np.testing.assert_allclose(fp32.probabilities(image), ref, atol=1e-4)  # exact size: one plain run
    out = fp32.runner(image=image[None])
    assert out["class_ids"].dtype == np.int32
    _assert_same_argmax(out["class_ids"][0], ref)
    for kind in ("fp16", "dynamic", "int8"):
        probs = TFLiteSegmenter(paths[f"tflite_{kind}"]).run_tile(image)
        assert probs.shape == ref.shape and np.isfinite(probs).all()
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=0.02)
    # The int8 model computes in int8: its convolution weights are int8 tensors.
    seg = TFLiteSegmenter(paths["tflite_int8"])
    dtypes = [d["dtype"] for d in seg.interpreter.get_tensor_details()]
    assert dtypes.count(np.int8) > 10
    assert os.path.getsize(paths["tflite_int8"]) < os.path.getsize(paths["tflite_fp32"])


def test_parity_report_json_and_table(exported):
    res = exported["result"]
    assert res.report_path == os.path.join(exported["out"], "tiny_unet_v1", "parity.json")
    report = json.load(open(res.report_path))
    assert report["num_images"] == 3 and report["split"] == "val" and report["tflite_size"] == list(SIZE)
    assert set(report["formats"]) == {"saved_model", "tflite_fp32", "tflite_fp16", "tflite_dynamic", "tflite_int8"}
    for name, r in report["formats"].items():
        assert {"size_mb", "mean_iu", "agreement", "max_abs_prob_diff", "per_class", "iu"} <= set(r), name
        assert r["size_mb"] > 0
        assert set(r["per_class"]) == {"a", "b", "c"}
    # The report runs the 16x16 TFLite models tiled over 20x24 images against whole-image
    # Keras, so tile borders cost even fp32 a little (measured 98.7%).
    for name in ("tflite_fp32", "tflite_fp16", "tflite_dynamic", "tflite_int8"):
        assert report["formats"][name]["agreement"] >= 95.0, (name, report["formats"][name]["agreement"])
    assert report["formats"]["saved_model"]["agreement"] > 99.9
    assert report["formats"]["saved_model"]["max_abs_prob_diff"] < 1e-5
    text = open(os.path.join(exported["out"], "tiny_unet_v1", "parity.txt")).read()
    assert "mIoU keras" in text and "tflite_int8" in text and text.strip() in "\n".join(exported["logs"])


def test_warning_block_names_the_worst_classes():
    per_class = {
        "road": {"agreement": 99.5, "iou_keras": 0.9, "iou_exported": 0.89, "iou_drop": 0.01},
        "pole": {"agreement": 60.0, "iou_keras": 0.5, "iou_exported": 0.3, "iou_drop": 0.2},
        "sky": {"agreement": 100.0, "iou_keras": 0.95, "iou_exported": 0.95, "iou_drop": 0.0},
    }
    report = {"keras": {"mean_iu": 0.78},
              "formats": {"tflite_fp32": {"agreement": 99.9, "mean_iu": 0.78, "per_class": per_class},
                          "tflite_int8": {"agreement": 95.0, "mean_iu": 0.7, "per_class": per_class}}}
    blocks = warnings_for(report, 98.0)
    assert len(blocks) == 1 and "WARNING: tflite_int8 agrees with Keras on only 95.00%" in blocks[0]
    worst = [l.split()[0] for l in blocks[0].splitlines() if l.startswith("    ")]
    assert worst == ["pole", "road"]  # sky lost nothing


def test_tiling_covers_any_size_exactly():
    class Fake(TFLiteSegmenter):
        def __init__(self):  # pylint: disable=super-init-not-called
            self.input_size = (16, 12)

        def run_tile(self, tile):
            assert tile.shape == (16, 12, 3)
            x = tile.astype(np.float32)
            return np.stack([x[..., 0], x[..., 1] * 2, x[..., 2] + 1], -1)

    fake = Fake()
    rng = np.random.default_rng(0)
    for shape in [(16, 12), (37, 51), (9, 40), (50, 5)]:
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        got = fake.probabilities(image, "tile", overlap=0.25)
        x = image.astype(np.float32)
        np.testing.assert_allclose(got, np.stack([x[..., 0], x[..., 1] * 2, x[..., 2] + 1], -1), rtol=1e-6)
        assert fake.probabilities(image, "resize").shape == (*shape, 3)
    assert MEAN_COLOR == tuple(int(round(m * 255)) for m in MEAN_RGB)


def test_predict_tflite_writes_original_size_outputs(exported, tmp_path):
    image = np.random.default_rng(6).integers(0, 256, (37, 51, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "odd.png")
    tflite = exported["result"].paths["tflite_int8"]
    r = _run(["-m", "keras_seg.predict", f"--tflite={tflite}", f"--out={tmp_path / 'pred'}", str(tmp_path / "odd.png")])
    assert r.returncode == 0, r.stderr[-2000:]
    label = np.asarray(Image.open(tmp_path / "pred/odd_label.png"))
    over = np.asarray(Image.open(tmp_path / "pred/odd_overlay.png"))
    assert label.shape == (37, 51) and over.shape == (37, 51, 3) and label.max() < 3
    np.testing.assert_array_equal(label, TFLiteSegmenter(tflite).predict(image))
    np.testing.assert_array_equal(over, overlay(image, label, exported["config"]["palette"]))

    r = _run(["-m", "keras_seg.predict", f"--tflite={tmp_path / 'missing.tflite'}", str(tmp_path / "odd.png")])
    assert r.returncode == 1 and "missing.tflite: file not found" in r.stderr


def test_export_refuses_model_dir_without_checkpoint(exported, tmp_path):
    with pytest.raises(CheckpointError, match="not a keras_seg training directory"):
        export(ExportConfig(model_dir=str(tmp_path / "nothing"), out=str(tmp_path / "o")), log=lambda m: None)
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    shutil.copy(os.path.join(exported["model_dir"], "model_config.json"), untrained)
    r = _run(["-m", "keras_seg.export", f"--model_dir={untrained}", f"--out={tmp_path / 'o'}"])
    assert r.returncode == 1, r.stderr[-2000:]
    assert "No latest checkpoint in" in r.stderr and "has not been trained" in r.stderr
    assert not (tmp_path / "o").exists()


def test_versions_and_format_subset(exported, tmp_path):
    out = str(tmp_path / "o")
    cfg = dict(model_dir=exported["model_dir"], out=out, formats=("tflite_fp32",), parity_images=0)
    first = export(ExportConfig(**cfg), log=lambda m: None)
    assert first.version == 1 and first.report is None and set(first.paths) == {"tflite_fp32"}
    assert not os.path.exists(os.path.join(out, "tiny_unet"))  # no SavedModel asked for
    with pytest.raises(ValueError, match=r"tiny_unet_v1 already exists.*next free: 2"):
        export(ExportConfig(**cfg, version=1), log=lambda m: None)
    os.makedirs(os.path.join(out, "tiny_unet", "7"))  # a SavedModel version exported elsewhere
    assert existing_versions(out, "tiny_unet") == [1, 7]
    with pytest.raises(ValueError, match=r"--parity_split='test' is not a split of .*; it has \['train', 'val'\]"):
        export(ExportConfig(model_dir=exported["model_dir"], out=out, parity_split="test"), log=lambda m: None)
    with pytest.raises(ValueError, match="--formats must be a non-empty subset"):
        ExportConfig(model_dir="x", out="y", formats=("onnx",)).validate()


DOCS = os.path.join(REPO, "docs", "deployment.md")
DOC_IMAGE = '".demo/shapes_raw/images/val/val_00000.png"'


def _doc_block(tag):
    """The ```python block of docs/deployment.md whose first line is ``# <tag>``."""
    text = open(DOCS, encoding="utf-8").read()
    blocks = [b for b in text.split("```python\n")[1:] if b.startswith(f"# {tag}\n")]
    assert len(blocks) == 1, tag
    code = blocks[0].split("```")[0]
    return code


def _doc_image(tmp_path):
    image = np.random.default_rng(7).integers(0, 256, (19, 26, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "doc.png")
    return image, repr(str(tmp_path / "doc.png"))


def test_docs_rest_request_runs_against_the_signature(exported, tmp_path, monkeypatch):
    """Runs the REST block of the docs; urlopen decodes the JSON body as TF Serving's REST API does."""
    import base64
    import urllib.request

    loaded = tf.saved_model.load(exported["result"].paths["saved_model"])

    def fake_urlopen(req, timeout=None):
        body = json.loads(req.data)
        sig = loaded.signatures[body.get("signature_name", "serving_default")]
        (name, spec), = sig.structured_input_signature[1].items()
        values = [base64.b64decode(v["b64"]) if isinstance(v, dict) else v for v in body["instances"]]
        outs = sig(**{name: tf.constant(values, dtype=spec.dtype)})
        preds = [{k: v[i].numpy().tolist() for k, v in outs.items()} for i in range(len(values))]
        return io.BytesIO(json.dumps({"predictions": preds}).encode())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    image, path = _doc_image(tmp_path)
    ns = {}
    exec(_doc_block("rest: request").replace(DOC_IMAGE, path), ns)  # pylint: disable=exec-used
    _assert_same_argmax(np.array(ns["class_ids"]), _keras_probs(exported["model"], image[None])[0])


def test_docs_grpc_request_runs_against_the_signature(exported, tmp_path):
    """Runs the gRPC blocks of the docs with a stub that serves the SavedModel in-process."""
    pytest.importorskip("tensorflow_serving.apis.predict_pb2", reason="needs the `serving` extra (tensorflow-serving-api)")
    from tensorflow_serving.apis import predict_pb2  # pylint: disable=import-outside-toplevel

    loaded = tf.saved_model.load(exported["result"].paths["saved_model"])

    class Stub:
        def __init__(self, channel):
            del channel

        def Predict(self, request, timeout=None):  # pylint: disable=invalid-name
            sig = loaded.signatures[request.model_spec.signature_name]
            outs = sig(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
            response = predict_pb2.PredictResponse()
            for k, v in outs.items():
                response.outputs[k].CopyFrom(tf.make_tensor_proto(v.numpy()))
            return response

    image, path = _doc_image(tmp_path)
    ns = {}
    exec(_doc_block("grpc: request").replace(DOC_IMAGE, path), ns)  # pylint: disable=exec-used
    ns["grpc"] = type("FakeGrpc", (), {"insecure_channel": staticmethod(lambda target: target)})
    ns["prediction_service_pb2_grpc"] = type("FakeGrpcApi", (), {"PredictionServiceStub": Stub})
    exec(_doc_block("grpc: send"), ns)  # pylint: disable=exec-used
    ref = _keras_probs(exported["model"], image[None])[0]
    _assert_same_argmax(ns["class_ids"], ref)
    np.testing.assert_allclose(ns["probabilities"], ref, atol=1e-5)
