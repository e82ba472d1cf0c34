"""Integer size options are validated by the shared check, with the option named."""

import pytest

import keras_seg

CASES = [
    ("segnet_basic", "filters", 0), ("fusionnet", "depth", True), ("pspnet", "head_filters", -1),
    ("deconvnet", "fc_kernel", 0), ("fc_densenet56", "growth_rate", 0), ("deeplab_v1", "fc6_rate", 0),
]


@pytest.mark.parametrize("name,arg,value", CASES)
def test_non_positive_int_option_is_refused(name, arg, value):
    with pytest.raises(ValueError, match=rf"{arg} must be an int >= 1\. Received: {arg}={value!r}"):
        keras_seg.build_model(name, 3, **{arg: value})
