"""ImageNet's colour constants, RGB on the 0..255 scale, declared once.

What the "imagenet", "imagenet_mean" and "caffe_mean" normalisations and the
AlexNet PCA lighting use (`cnnjax.data`), and what published weights expect
(`cnnjax.weights`, `cnnjax.interop`). Plain Python tuples: importable anywhere
(`cnnjax.data` re-exports the first four as float32 arrays).
"""

# torchvision's mean and std ((0.485, 0.456, 0.406) and (0.229, 0.224, 0.225) x 255).
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)
# Caffe's ImageNet mean, as the VGG/ResNet releases and keras.applications' "caffe"
# mode subtract it (there in BGR order: CAFFE_MEAN_BGR).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
CAFFE_MEAN_RGB = CAFFE_MEAN_BGR[::-1]
# ImageNet RGB principal components (AlexNet Sec. 4.1): the standard deviation along
# each axis (255 x the widely used [0.2175, 0.0188, 0.0045]) and the eigenvectors as
# columns.
IMAGENET_PCA_STD = (55.46, 4.794, 1.148)
IMAGENET_PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
                       (-0.5808, -0.0045, -0.8140),
                       (-0.5836, -0.6948, 0.4203))
