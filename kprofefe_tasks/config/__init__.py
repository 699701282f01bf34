"""Configuration: typed settings read from the environment at the edge, and the discovery schedule."""
