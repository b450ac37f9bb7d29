"""mailrider.smtp."""
