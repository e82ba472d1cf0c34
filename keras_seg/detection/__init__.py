"""Instance segmentation: Mask R-CNN (He et al., 2017, https://arxiv.org/abs/1703.06870) with an FPN (Lin et al., 2017).

Feature Pyramid Networks: https://arxiv.org/abs/1612.03144. Boxes are float32
``[y1, x1, y2, x2]`` in absolute, continuous pixel coordinates of the input image (pixel
``i`` spans ``[i, i + 1)``), the convention of ``tf.image.non_max_suppression``. Ground
truth is padded per image to a static ``max_instances``: ``gt_boxes [B, M, 4]`` and int32
``gt_classes [B, M]`` holding object classes ``1..K`` and ``-1`` for padding; class ``0`` is
the background of the heads.

Commands (each ``python -m``; flags from :mod:`~keras_seg.detection.options`):
``keras_seg.detection.train`` (:mod:`~keras_seg.detection.trainer`), ``...detection.evaluate``
(box and mask AP at the stored image size, :mod:`~keras_seg.detection.evaluation`),
``...detection.predict`` (drawn instances and JSON) and ``...detection.export`` (SavedModel,
builtin-ops TFLite and a parity report). A run's ``model_dir``: :mod:`~keras_seg.detection.run_dir`.
"""
