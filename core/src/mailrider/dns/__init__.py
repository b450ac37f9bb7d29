"""mailrider.dns."""
