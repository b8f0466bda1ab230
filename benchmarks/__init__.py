"""asv benchmark suite for nbconv (see asv.conf.json at the repository root)."""
