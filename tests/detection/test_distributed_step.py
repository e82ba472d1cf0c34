"""The Mask R-CNN training step over 2 replicas takes the mean of the replicas' losses and gradients.

Both replicas get the same image, so each replica's losses (same image, same sampling seed,
synchronized batch norm over two copies) are those of the image alone on one device, and the
update must be exactly one single-device step: a missing or doubled ``1 / replicas`` would
show as a doubled or halved loss and update. (With different images the replicas' batch-norm
statistics are global while their losses are per replica, so no single-device run is a
reference.) Runs in a subprocess: the logical CPU devices must exist before TensorFlow starts.
"""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from keras_seg.detection.model import LOSS_NAMES, build_mask_rcnn
    from keras_seg.detection.trainer import make_detection_step

    # width 16, not 8: 8 trips TF 2.21's oneDNN 1x1 stride-2 weight-gradient bug on AVX-512 (README, Known issues).
    tiny = dict(backbone="resnet18", backbone_options=dict(blocks=(1, 1, 1, 1), width=16), fpn_width=16,
                box_fc_width=32, mask_width=16, mask_num_convs=1, rpn_batch_per_image=32,
                rpn_pre_nms_topk=(64, 32), rpn_post_nms_topk=(32, 16), roi_batch_per_image=16, max_instances=2,
                anchor_sizes=(8, 16, 32, 64, 128), seed=3)
    image = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32")
    masks = np.zeros((1, 2, 64, 64), "uint8")
    masks[0, 0, 8:30, 30:60] = 1
    masks[0, 1, 36:60, 4:28] = 1
    one = {"image": image, "gt_masks": masks, "gt_boxes": np.array([[[8, 30, 30, 60], [36, 4, 60, 28]]], "float32"),
           "gt_classes": np.array([[1, 3]], "int32")}
    batch = {k: np.concatenate([v, v]) for k, v in one.items()}  # the same image on both replicas
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = build_mask_rcnn(3, (64, 64, 3), **tiny)
        optimizer = keras.optimizers.SGD(0.1)
        optimizer.build(model.trainable_variables)
    reference = build_mask_rcnn(3, (64, 64, 3), **tiny)
    reference.set_weights(model.get_weights())

    with tf.GradientTape() as tape:  # one device, the image alone, the step's sampling seed
        losses = reference(one, training=True)
        total = tf.add_n([losses[k] for k in LOSS_NAMES])
    grads = tape.gradient(total, reference.trainable_variables)
    want = [v.numpy() - 0.1 * g.numpy() for v, g in zip(reference.trainable_variables, grads)]
    moved = max(float(np.max(np.abs(0.1 * g.numpy()))) for g in grads)

    step = make_detection_step(model, optimizer, strategy, {k: 1.0 for k in LOSS_NAMES})
    out = step(iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(batch).batch(2))))
    assert abs(float(out["total"]) - float(total)) < 1e-5, (float(out["total"]), float(total))
    worst = max(float(np.max(np.abs(v.numpy() - w))) for v, w in zip(model.trainable_variables, want))
    assert worst < 1e-5 and moved > 1e-3, (worst, moved)  # the step moved weights, as one device would
    print("OK", float(total), worst, moved)
""")


@pytest.mark.slow  # about 30 s on 2 cores
def test_two_replicas_average_their_losses_and_gradients():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout[-2000:] + done.stderr[-4000:]
