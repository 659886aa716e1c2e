"""The input system's backend-independent half: what a preset is, and what runs on the device.

  presets   each augmentation preset and evaluation view declared once, as data:
            an ordered list of ops with parameters and defaults, each op marked
            as host-only or one that may run on the device; the tf.data
            (`cnnjax.data`) and DALI (`cnnjax.dali`) back ends and `device`
            are built from these declarations
  boundary  where the host stops (`Boundary`), and the one type a batch has
            when it crosses to the device (`HostBatch`)
  device    the accelerator's share: colour distortions, normalisation, the
            crop resize of the Inception preset, inside the jitted steps
  imagenet  ImageNet's colour constants (means, std, PCA), declared once
  folders   an image folder's layout and content key from its directory tree,
            and the data_dir both back ends read (`cnnjax.data` prepares by
            that key, `cnnjax.dali` opens by it)

Needs no TensorFlow (the `presets` and `boundary` declarations need nothing
but Python; `device` needs jax), so the train step, DALI hosts and other JAX
projects import it without the host pipeline. Importing this package imports
none of its modules.
"""
