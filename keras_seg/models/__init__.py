"""Model families. Importing this package registers every architecture.

Each family module is imported explicitly here: this is the only registration side effect.
"""

from keras_seg.models import bisenet  # noqa: F401
from keras_seg.models import deconvnet  # noqa: F401
from keras_seg.models import deeplab  # noqa: F401
from keras_seg.models import enet  # noqa: F401
from keras_seg.models import fc_densenet  # noqa: F401
from keras_seg.models import fcn  # noqa: F401
from keras_seg.models import fusionnet  # noqa: F401
from keras_seg.models import gfrnet  # noqa: F401
from keras_seg.models import linknet  # noqa: F401
from keras_seg.models import pspnet  # noqa: F401
from keras_seg.models import refinenet  # noqa: F401
from keras_seg.models import segnet  # noqa: F401
from keras_seg.models import unet  # noqa: F401
from keras_seg.models import unet_pp  # noqa: F401
