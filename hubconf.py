"""torch.hub entry points (filled in by the interop work)."""
