"""selmem: layer-wise selective memory for Transformers."""

from selmem.config import ObjectiveConfig, SelmemConfig
from selmem.decode import DecodeCache
from selmem.memory.layer import MemoryStack, SelectiveMemory
from selmem.model import Output, SelectiveMemoryTransformer
from selmem.state import MemoryState

__all__ = ["DecodeCache", "MemoryStack", "MemoryState", "ObjectiveConfig", "Output", "SelectiveMemory",
           "SelectiveMemoryTransformer", "SelmemConfig"]
__version__ = "0.1.0"
