"""Model catalog: curated entries, hub repos inferred from metadata, local imports."""
from engine.catalog.card import AttentionSupport, ModelCard, Source

__all__ = ["AttentionSupport", "ModelCard", "Source"]
