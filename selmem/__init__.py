"""selmem: layer-wise selective memory for Transformers."""

from selmem.config import SelmemConfig
from selmem.model import Output, SelectiveMemoryTransformer
from selmem.state import MemoryState

__all__ = ["MemoryState", "Output", "SelectiveMemoryTransformer", "SelmemConfig"]
__version__ = "0.1.0"
