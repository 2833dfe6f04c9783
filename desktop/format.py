"""Human-readable numbers for labels and tables (shared with the CLI: engine.format)."""
from engine.format import human_bytes, human_duration, human_params

__all__ = ["human_bytes", "human_duration", "human_params"]
