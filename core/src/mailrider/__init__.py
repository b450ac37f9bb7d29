"""mailrider: a privilege-separated mail transfer agent, standard library only."""

__version__ = "0.1.0"
