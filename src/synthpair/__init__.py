"""synthpair: diffusion-synthesised image+mask pairs for medical image segmentation.

Stages (each a CLI command and a library function, each writing a folder the next reads):
prepare -> train -> generate -> segment -> report; ``run`` chains them.
"""
import os as _os

# Never let a library reach for a model hub: this toolkit runs offline.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.1.0"
