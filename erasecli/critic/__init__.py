"""The timestep-aware critic V_phi(x_t, t, c) and its training."""
