"""The PyTorch side of the train-step benchmark: the torchvision twin of a cnnjax model.

Same batch size, resolution and precision as the JAX run: channels-last
memory format, SGD with momentum 0.9 and weight decay 1e-4 on conv/linear
weights only (as cnnjax's "kernels" mask), cross-entropy (+0.3 x each
auxiliary head for GoogLeNet), bfloat16 through autocast with float32
weights. `mode="compile"` wraps the model in `torch.compile` (the optimizer
step stays eager); its compile time is the first step's wall time.
Threads: as many as the cores this process may use, like XLA:CPU.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks import _common

# cnnjax name -> (torchvision constructor, exact twin?). Not exact: torchvision
# builds a different network of the same family (see `note`).
TORCHVISION_TWINS: dict[str, tuple[str, bool, str]] = {
    **{f"resnet{d}": (f"resnet{d}", True, "") for d in (18, 34, 50, 101, 152)},
    **{f"vgg{d}": (f"vgg{d}", True, "") for d in (11, 13, 16, 19)},
    **{f"vgg{d}_bn": (f"vgg{d}_bn", True, "") for d in (11, 13, 16, 19)},
    "vgg_a": ("vgg11", True, ""), "vgg_b": ("vgg13", True, ""), "vgg_d": ("vgg16", True, ""),
    "vgg_e": ("vgg19", True, ""),
    "alexnet_v2": ("alexnet", True, ""),
    "alexnet": ("alexnet", False,
                "torchvision's AlexNet is the single-tower 2014 network (no LRN, no groups)"),
    "googlenet_torchvision": ("googlenet", True, ""),
    "googlenet": ("googlenet", False,
                  "torchvision's GoogLeNet has BatchNorm and 3x3 kernels in the 5x5 branch"),
    "googlenet_bn": ("googlenet", False, "torchvision's GoogLeNet has 3x3 kernels in the 5x5 branch"),
}


def build_model(name: str, num_classes: int):
  """(torch module, exact twin?, note) or raises LookupError when there is no twin."""
  import torchvision  # pylint: disable=import-outside-toplevel
  if name.startswith("cifar_resnet") or name.startswith("cifar_plain"):
    from benchmarks import _torch_models  # pylint: disable=import-outside-toplevel
    return _torch_models.cifar_resnet(name, num_classes), True, ""
  if name not in TORCHVISION_TWINS:
    raise LookupError(f"no PyTorch twin for {name!r}")
  constructor, exact, note = TORCHVISION_TWINS[name]
  kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
  if constructor == "googlenet":
    kwargs.update(aux_logits=True, init_weights=True)
  return getattr(torchvision.models, constructor)(**kwargs), exact, note


class TorchRunner:
  """Setup, timed steps and final report of one PyTorch configuration."""

  def __init__(self, spec: dict[str, Any]):
    self.spec = spec

  def setup(self) -> dict[str, Any]:
    spec = self.spec
    import torch  # pylint: disable=import-outside-toplevel
    import torchvision  # pylint: disable=import-outside-toplevel
    rss_after_import = _common.current_rss_bytes()
    self._torch = torch
    threads = spec.get("threads") or _common.cpu_count()
    torch.set_num_threads(threads)
    self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)

    model, exact, note = build_model(spec["model"], spec["num_classes"])
    model = model.to(self.device, memory_format=torch.channels_last).train()
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    self.optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.1, momentum=0.9)
    batch_size, size = spec["batch_size"], spec["image_size"]
    generator = torch.Generator().manual_seed(0)
    self.images = torch.randn(batch_size, 3, size, size, generator=generator).to(
        self.device, memory_format=torch.channels_last)
    self.labels = torch.randint(0, spec["num_classes"], (batch_size,), generator=generator).to(
        self.device)
    self.model = torch.compile(model) if spec["mode"] == "compile" else model
    self.autocast_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(spec["dtype"])

    start = time.perf_counter()
    loss = self._step()
    self._sync()
    first_step_s = time.perf_counter() - start
    warmup_s = [wall for wall, _ in self.time_steps(spec["warmup"])]
    device_name = (torch.cuda.get_device_name() if self.device.type == "cuda" else "cpu")
    return {
        "framework": "torch",
        "device": f"{self.device.type}: {device_name}",
        "platform": self.device.type,
        "train_step": (f"{'torchvision' if spec['model'] in TORCHVISION_TWINS else 'torch'} "
                       f"twin of {spec['model']} "
                       f"({'torch.compile' if spec['mode'] == 'compile' else 'eager'}), "
                       f"channels_last, SGD momentum + wd"),
        "torch_twin_exact": exact,
        "torch_twin_note": note,
        # torch.compile compiles lazily inside the first call: its wall time
        # (compile + one step) is the compile time; eager has none.
        "compile_s": first_step_s if spec["mode"] == "compile" else None,
        "first_step_s": first_step_s,
        "warmup_step_s": warmup_s,
        "first_loss": float(loss),
        "threads": threads,
        "rss_after_import_bytes": rss_after_import,
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__},
    }

  def _loss(self, outputs):
    functional = self._torch.nn.functional
    if isinstance(outputs, tuple):  # GoogLeNet in training mode: (logits, aux2, aux1)
      main, *aux = outputs
      loss = functional.cross_entropy(main.float(), self.labels)
      for aux_logits in aux:
        if aux_logits is not None:
          loss = loss + 0.3 * functional.cross_entropy(aux_logits.float(), self.labels)
      return loss
    return functional.cross_entropy(outputs.float(), self.labels)

  def _step(self):
    torch = self._torch
    self.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype or torch.float32,
                        enabled=self.autocast_dtype is not None):
      outputs = self.model(self.images)
    loss = self._loss(outputs)
    loss.backward()
    self.optimizer.step()
    return loss.detach()

  def _sync(self) -> None:
    if self.device.type == "cuda":
      self._torch.cuda.synchronize()

  def time_steps(self, count: int) -> list[tuple[float, float]]:
    """(wall seconds, process CPU seconds) of each of `count` steps."""
    seconds = []
    for _ in range(count):
      start, cpu_start = time.perf_counter(), time.process_time()
      self._step()
      self._sync()
      seconds.append((time.perf_counter() - start, time.process_time() - cpu_start))
    return seconds

  def finish(self) -> dict[str, Any]:
    if self.device.type == "cuda":
      return {"peak_memory_bytes": int(self._torch.cuda.max_memory_allocated()),
              "memory_kind": "device max_memory_allocated"}
    return {"peak_memory_bytes": _common.peak_rss_bytes(), "memory_kind": "host peak RSS"}
