"""Quality evaluation: the shapes metrics (`shapes`), the held-out sampling evaluation (`sample`), the VAE
ceiling (`vae_ceiling`) and paired statistics between two evaluations (`paired`)."""
