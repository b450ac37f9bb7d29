"""mailrider.config."""
