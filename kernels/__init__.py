"""livelab: kernels."""
