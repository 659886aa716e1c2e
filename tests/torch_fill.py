"""torchvision networks with random weights, for the conversion tests (imports torch).

Used by tests/interop/test_torchvision.py and, as a separate process,
tests/weights/torch_reference.py. Networks are built on the meta device and
filled here: torchvision's own initialisers (truncated normals, Kaiming) cost
seconds for the big ones and are beside the point of a conversion test.
"""

import torch


def randomise_batch_norm(module: "torch.nn.Module", generator: "torch.Generator") -> None:
  """Non-trivial running statistics and affine parameters in every BN layer."""
  for layer in module.modules():
    if isinstance(layer, torch.nn.BatchNorm2d):
      size = layer.num_features
      layer.running_mean.copy_(torch.randn(size, generator=generator) * 0.2)
      layer.running_var.copy_(torch.rand(size, generator=generator) * 1.5 + 0.5)
      layer.weight.data.copy_(torch.rand(size, generator=generator) * 0.5 + 0.75)
      layer.bias.data.copy_(torch.randn(size, generator=generator) * 0.1)


def fill_randomly(model, seed: int):
  """Random weights (std 1/sqrt(fan_in)) and BatchNorm statistics, in eval mode."""
  model = model.to_empty(device="cpu").eval()
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for parameter in model.parameters():
      fan_in = parameter[0].numel() if parameter.ndim > 1 else 1
      parameter.copy_(torch.randn(parameter.shape, generator=generator) / fan_in ** 0.5)
    for buffer_name, buffer in model.named_buffers():
      if buffer_name.endswith("num_batches_tracked"):
        buffer.zero_()
    randomise_batch_norm(model, generator)
  return model
