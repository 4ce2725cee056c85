"""livelab: courses."""
