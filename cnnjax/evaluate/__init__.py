r"""Evaluation as the papers did it: multi-crop, dense multi-scale, ensembles.

    python -m cnnjax.evaluate --workdir workdirs/quickstart --views 10crop
    python -m cnnjax.evaluate --workdir workdirs/vgg_d --workdir workdirs/vgg_e \
        --views dense_multiscale --output vgg_de.json

Views (test-time augmentation; the softmax is averaged over a view's images):

  center            one centre crop (shorter side -> image_size / 0.875).
  10crop            four corners + centre of the 256 square, and their mirror
                    images (AlexNet, ResNet).
  dense_multiscale  the network applied fully convolutionally to whole
                    rescaled images at several scales Q, the class-score map
                    averaged spatially, and the mirror image (VGG: fc layers
                    as convolutions, `fully_convolutional=True`, same
                    parameters; ResNet: its global average pool already
                    makes it so). Q: VGG {S-32, S, S+32} for a fixed training
                    scale S, {Smin, (Smin+Smax)/2, Smax} for scale jitter;
                    ResNet {224, 256, 384, 480, 640} (both scaled by
                    image_size / 224 for smaller inputs).
  144crop           GoogLeNet's 4 scales x 3 squares x 6 crops x 2 mirrors.
  150crop           VGG's multi-crop: 3 scales x a 5x5 grid x 2 mirrors.
  dense+150crop     VGG's dense and multi-crop posteriors averaged (Table 5).

Dense views keep the whole image at shorter side Q (one image per batch
when sizes vary). Images already at the network's size (CIFAR, digits) are
not rescaled: the multi-crop views cut the 4-pixel zero-padded image, as
training did (see cnnjax.evaluate.ensemble and cnnjax.data.views).

Ensembles (AlexNet's 5 CNNs, GoogLeNet's 7 models, VGG D+E) average the
softmax over models as well. Every example of the split is counted exactly
once: batches are padded to a fixed shape and carry a mask. The report gives
top-1 and top-5 error (and the cross-entropy of the averaged posteriors) for
the ensemble and for each member.

The loop's periodic validation scores its batches with the same code
(`cnnjax.scoring`: views -> class scores -> (sum, count) pairs ->
`sum_over_batches`). The same logic for notebooks:

    from cnnjax import evaluate as ev
    member = ev.load_member("workdirs/quickstart")            # EMA weights if kept
    report = ev.evaluate([member], "digits", view="10crop")
    probs = ev.predict_views(model, variables, batch, "10crop")   # [B, classes]
"""
from cnnjax.evaluate.ensemble import (
    DATA_VIEWS, VIEWS, DataSettings, Member, check_ensemble, data_settings, dense_scales,
    evaluate, load_member, model_for_view, predict_views)
from cnnjax.evaluate.report import format_table

__all__ = [
    "DATA_VIEWS", "VIEWS", "DataSettings", "Member", "check_ensemble", "data_settings",
    "dense_scales", "evaluate", "format_table", "load_member", "main", "model_for_view",
    "predict_views",
]


def main(argv=None) -> int:
  """`python -m cnnjax.evaluate` (see cnnjax/evaluate/__main__.py)."""
  from cnnjax.evaluate.__main__ import main as cli_main  # pylint: disable=import-outside-toplevel
  return cli_main(argv)
