"""What this machine can hold: hardware profile, memory model, and the stack `init` writes."""
