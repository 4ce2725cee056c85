"""livelab: grading."""
