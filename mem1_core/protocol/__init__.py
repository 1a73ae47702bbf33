"""What agents and environments share: the tag protocol and answer scoring (no project imports)."""
