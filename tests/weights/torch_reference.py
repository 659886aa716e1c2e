"""torchvision's network with random weights, saved where torchvision's download would put it.

Run as a separate process (torch stays out of the test process):

    python torch_reference.py ARCH VARIANT IMAGE_SIZE OUT_DIR

Builds torchvision.models.<ARCH>(weights=None), randomises every parameter and
BatchNorm statistic, and saves its state dict as $TORCH_HOME/hub/checkpoints/
<the file name of the weights enum's URL> (so torchvision's own
load_state_dict_from_url finds it without a network) and as
OUT_DIR/weights.safetensors. OUT_DIR/reference.npz holds "images" (uint8 RGB),
"logits" (torchvision's, on the images scaled to [0, 1] and normalised with the
weights' mean and std) and "categories" (meta["categories"]).
"""

import os
import sys

sys.modules.setdefault("triton", None)  # see tests/conftest.py

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from torch_fill import fill_randomly  # noqa: E402  (tests/)


def main(arch, variant, image_size, out_dir):
  image_size = int(image_size)
  torch.set_num_threads(1)
  weights = torchvision.models.get_model_weights(arch)[variant]
  with torch.device("meta"):
    model = getattr(torchvision.models, arch)(weights=None)
  model = fill_randomly(model, seed=0)
  state = model.state_dict()
  checkpoints = os.path.join(torch.hub.get_dir(), "checkpoints")
  os.makedirs(checkpoints, exist_ok=True)
  torch.save(state, os.path.join(checkpoints, os.path.basename(weights.url)))
  save_file({k: v.contiguous() for k, v in state.items()},
            os.path.join(out_dir, "weights.safetensors"))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, image_size, image_size, 3), dtype=np.uint8)
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
  inputs = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
  with torch.no_grad():
    logits = model(inputs).numpy()
  np.savez(os.path.join(out_dir, "reference.npz"), images=images, logits=logits,
           categories=np.array(weights.meta["categories"]),
           resize_size=np.array(weights.transforms().resize_size))


if __name__ == "__main__":
  main(*sys.argv[1:])
