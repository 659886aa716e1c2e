"""Builds a keras.applications network with random weights, saves it, records its logits.

Run as a separate process (Keras and TensorFlow stay out of the test process):

    python keras_reference.py APPLICATION IMAGE_SIZE FORMAT OUT_DIR

FORMAT: "legacy_h5" (the layout keras.applications downloads: weights by layer
name), "weights_h5" (Keras 3's model.save_weights), "keras" (model.save). Every
bias, BatchNorm scale, shift and running statistic is randomised first, so that
a wrong mapping (or a conv bias not folded into its BatchNorm) shows. Writes
OUT_DIR/weights.<ext> and OUT_DIR/reference.npz with "images" (uint8 RGB) and
"logits" (Keras's, on preprocess_input(images), no final softmax).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import keras  # noqa: E402

PREPROCESS = {"VGG16": keras.applications.vgg16, "VGG19": keras.applications.vgg19,
              "ResNet50": keras.applications.resnet, "ResNet101": keras.applications.resnet,
              "ResNet152": keras.applications.resnet}
EXTENSIONS = {"legacy_h5": "h5", "weights_h5": "weights.h5", "keras": "keras"}


def randomise(model, rng):
  for layer in model.layers:
    values = layer.get_weights()
    if not values:
      continue
    if isinstance(layer, keras.layers.BatchNormalization):
      size = values[0].shape
      values = [rng.uniform(0.75, 1.25, size), rng.normal(0, 0.1, size),
                rng.normal(0, 0.2, size), rng.uniform(0.5, 2.0, size)]
    else:  # kernel (kept: Glorot) and bias
      values = [values[0], rng.normal(0, 0.05, values[1].shape)]
    layer.set_weights([np.asarray(v, np.float32) for v in values])


def main(application, image_size, file_format, out_dir):
  image_size = int(image_size)
  rng = np.random.default_rng(0)
  shape = None if image_size == 224 else (image_size, image_size, 3)
  model = getattr(keras.applications, application)(weights=None, input_shape=shape,
                                                   classifier_activation=None)
  randomise(model, rng)
  path = os.path.join(out_dir, "weights." + EXTENSIONS[file_format])
  if file_format == "legacy_h5":
    import h5py  # pylint: disable=import-outside-toplevel
    from keras.src.legacy.saving import legacy_h5_format  # pylint: disable=import-outside-toplevel
    with h5py.File(path, "w") as f:
      legacy_h5_format.save_weights_to_hdf5_group(f, model)
  elif file_format == "weights_h5":
    model.save_weights(path)
  else:
    model.save(path)
  images = rng.integers(0, 256, (2, image_size, image_size, 3), dtype=np.uint8)
  inputs = PREPROCESS[application].preprocess_input(images.astype(np.float32))
  logits = np.asarray(model(inputs, training=False))
  np.savez(os.path.join(out_dir, "reference.npz"), images=images, logits=logits, path=path)


if __name__ == "__main__":
  main(*sys.argv[1:])
