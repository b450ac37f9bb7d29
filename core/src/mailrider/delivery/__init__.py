"""mailrider.delivery."""
