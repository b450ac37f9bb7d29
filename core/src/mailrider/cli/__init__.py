"""mailrider.cli."""
