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
"""

__version__ = "0.1.0"
