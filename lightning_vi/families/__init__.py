"""Model families; each sub-package lists its public names. Every family is a ``VIModule``."""
