"""livelab: lab_hardware."""
