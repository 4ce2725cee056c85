"""livelab: grading/checks."""
