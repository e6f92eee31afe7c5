"""The Ray runtime's task workers: thin actors around leap_rl's plain TaskRunner."""
