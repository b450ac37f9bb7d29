"""mailrider.crypto."""
