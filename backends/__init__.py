"""Training backends behind one protocol: torch (cpu, cuda, mps)."""
