"""livelab: reports."""
