"""Model families. Importing this package registers every architecture.

Each family module is imported explicitly here: this is the only registration side effect.
"""

from keras_seg.models import unet  # noqa: F401
from keras_seg.models import fcn  # noqa: F401
from keras_seg.models import segnet  # noqa: F401
from keras_seg.models import deconvnet  # noqa: F401
from keras_seg.models import fusionnet  # noqa: F401
