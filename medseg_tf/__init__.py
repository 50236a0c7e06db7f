"""medseg_tf: the reusable code of the medseg-tf course.

Layers (each only imports from the layers above it):

* NumPy / SciPy / nibabel only, no TensorFlow: ``settings``, ``errors``, ``io``,
  ``runspec`` (the run spec training and prediction share), ``datasets``,
  ``sources``, ``phantom``, ``phantom_ct``, ``phantom_brain``, ``phantom_fundus``,
  ``phantoms``, ``images2d``, ``regions``, ``download``, ``preprocessing``,
  ``metrics``, ``postprocessing``, ``sliding``, ``onnx_predict``, ``uncertainty``,
  ``convolution`` (NumPy reference ops), ``plots``, ``diagrams``; ``itk`` (SimpleITK).
* Keras 3 only (they run under JAX too): ``models``, ``losses``, ``schedules``.
* TensorFlow / Keras 3: ``augment``, ``pipeline``, ``training`` (with ``runtime``,
  ``runfolder``, ``callbacks``, ``distributed``), ``crossval``, ``inference``,
  ``explain``, ``quickfit``, ``export``, ``benchmark``.
* On top (nothing imports them): ``cli``, ``course``, ``site``.

Conventions used everywhere: arrays are channels-last; 3D volumes are indexed
``(x, y, z)`` in the voxel order of the NIfTI file (RAS+ after
:func:`medseg_tf.io.reorient_to_ras`); voxel spacing is in millimetres.

TensorFlow turns on its oneDNN CPU kernels by default only on CPUs with neural-network instructions
(AVX-512 VNNI / BF16, AMX and the like); on an AVX2-only CPU the course's U-Nets ran 1.3-4x slower
without them (README, "oneDNN on every x86 CPU"). Importing
``medseg_tf`` sets ``TF_ENABLE_ONEDNN_OPTS=1`` unless the variable is already set, so import it
*before* ``keras`` or ``tensorflow`` (TensorFlow reads the variable once, when it is imported).
Set ``TF_ENABLE_ONEDNN_OPTS=0`` to keep TensorFlow's own choice. Imported after TensorFlow, on a CPU
where TensorFlow left oneDNN off, it warns once.
"""

import os
import sys
import warnings


def _tensorflow_onednn() -> bool | None:
    """Whether the TensorFlow already imported runs its oneDNN CPU kernels; None if it is not imported (or the
    build lacks the private module that says). Imports nothing: TensorFlow decides once, at its import."""
    port = sys.modules.get("tensorflow.python.util._pywrap_util_port")
    is_enabled = getattr(port, "IsMklEnabled", None)
    return None if is_enabled is None else bool(is_enabled())


if "TF_ENABLE_ONEDNN_OPTS" not in os.environ:
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
    if _tensorflow_onednn() is False:
        warnings.warn("TensorFlow was imported before medseg_tf and runs without its oneDNN CPU kernels "
                      "(1.3-4x slower for the course's U-Nets on such a CPU): import medseg_tf first, or set "
                      "TF_ENABLE_ONEDNN_OPTS=1 before Python starts", RuntimeWarning, stacklevel=2)

__version__ = "0.1.0"
