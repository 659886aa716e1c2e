"""Evaluation, embeddings and retrieval sharded over 4 CPU devices give the 1-device answers.

One subprocess (XLA_FLAGS must be set before jax is imported) runs every
multi-device check, so the suite pays for one extra interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))

SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, {here!r})
    import jax
    import numpy as np
    from eval_helpers import mean_colour_member
    from test_evaluate import hand_batches, reference
    from cnnjax import embed, evaluate as ev, retrieval
    assert jax.device_count() == 4

    members = [mean_colour_member(3), mean_colour_member(4)]
    batches = hand_batches(10, seed=5)
    report = ev.evaluate(members, batches, view="10crop", progress=False)
    (top1, top5), count = reference(members, batches, 10)
    assert abs(report["top1_error"] - top1) < 1e-9, (report, top1)
    assert abs(report["top5_error"] - top5) < 1e-9 and report["num_examples"] == count

    plain = hand_batches(None, seed=9)
    embeddings, labels = embed.embed(*members[0], plain)
    images = np.concatenate([b["image"][b["mask"]] for b in plain])
    np.testing.assert_allclose(embeddings, images.mean(axis=(1, 2)), rtol=1e-5, atol=1e-5)

    rng = np.random.default_rng(9)
    q = rng.normal(size=(30, 6)).astype(np.float32)
    g = rng.normal(size=(70, 6)).astype(np.float32)
    d, i = retrieval.nearest_neighbours(q, g, 4, query_chunk_size=6, gallery_chunk_size=16)
    sq = ((q[:, None].astype(np.float64) - g[None]) ** 2).sum(-1)
    want = np.argsort(sq, axis=1, kind="stable")[:, :4]
    assert (i == want).all(), (i, want)
    np.testing.assert_allclose(d, np.sqrt(np.take_along_axis(sq, want, 1)), rtol=2e-5)
    print("ok")
""")


def test_four_devices_agree_with_the_references():
  result = subprocess.run([sys.executable, "-c", SCRIPT.format(here=HERE)],
                          capture_output=True, text=True, timeout=180)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("ok")
