"""Training-side helpers: proxy-model training and the per-domain loss it logs."""
