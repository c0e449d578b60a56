"""Training an RQVAE: the driver (`loop.train`, exported as `rqvae.train`) over named steps (sample, start,
epoch steps, early stopping, checkpoints), and the optional collaborative signal from interaction logs."""
