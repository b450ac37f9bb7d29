"""mailrider.filter."""
