"""livelab: livelab."""
