"""Network definitions; importing this package registers every architecture."""

from model_zoo.networks import dsn3d, unet3d_ds, unetpp3d  # noqa: F401  (register on import)
