"""medseg_tf: the reusable code of the medseg-tf course.

Layers (each only imports from the layers above it):

* NumPy / SciPy / nibabel only, no TensorFlow: :mod:`medseg_tf.settings`,
  :mod:`medseg_tf.errors`, :mod:`medseg_tf.io`, :mod:`medseg_tf.datasets`,
  :mod:`medseg_tf.phantom`, :mod:`medseg_tf.download`,
  :mod:`medseg_tf.preprocessing`, :mod:`medseg_tf.metrics`,
  :mod:`medseg_tf.convolution` (NumPy reference ops), :mod:`medseg_tf.plots`.
* TensorFlow / Keras 3: :mod:`medseg_tf.augment`, :mod:`medseg_tf.pipeline`,
  :mod:`medseg_tf.models`, :mod:`medseg_tf.losses`, :mod:`medseg_tf.training`,
  :mod:`medseg_tf.inference`.
* On top (nothing imports them): :mod:`medseg_tf.cli`, :mod:`medseg_tf.course`.

Conventions used everywhere: arrays are channels-last; 3D volumes are indexed
``(x, y, z)`` in the voxel order of the NIfTI file (RAS+ after
:func:`medseg_tf.io.reorient_to_ras`); voxel spacing is in millimetres.
"""

__version__ = "0.1.0"
