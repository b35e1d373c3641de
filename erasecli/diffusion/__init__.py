"""Sampling with per-step log-probabilities (DDIM with eta > 0) and schedule helpers."""
